"""Dassl-compatible configuration defaults for the built-in engine.

Key names and defaults follow Dassl 0.6.3 (``dassl/config/defaults.py``) so that the YAML files
users already have merge unchanged.  Keys this project adds to every run are declared in
:func:`add_engine_keys`, which is also applied on top of real Dassl's config.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN


def _dassl_defaults() -> CN:
    c = CN()
    c.VERSION = 1
    c.OUTPUT_DIR = "./output"  # where logs, checkpoints and results go
    c.RESUME = ""  # directory to resume from (default: OUTPUT_DIR when it holds checkpoints)
    c.SEED = -1  # negative: no fixed seed; 0 is a valid seed
    c.USE_CUDA = True  # use CUDA when it is available
    c.VERBOSE = True

    c.INPUT = CN()
    c.INPUT.SIZE = (224, 224)
    c.INPUT.INTERPOLATION = "bilinear"
    c.INPUT.TRANSFORMS = ()
    c.INPUT.NO_TRANSFORM = False
    c.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
    c.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
    c.INPUT.CROP_PADDING = 4
    c.INPUT.RRCROP_SCALE = (0.08, 1.0)
    c.INPUT.CUTOUT_N = 1
    c.INPUT.CUTOUT_LEN = 16
    c.INPUT.GN_MEAN = 0.0
    c.INPUT.GN_STD = 0.15
    c.INPUT.RANDAUGMENT_N = 2
    c.INPUT.RANDAUGMENT_M = 10
    c.INPUT.COLORJITTER_B = 0.4
    c.INPUT.COLORJITTER_C = 0.4
    c.INPUT.COLORJITTER_S = 0.4
    c.INPUT.COLORJITTER_H = 0.1
    c.INPUT.RGS_P = 0.2
    c.INPUT.GB_P = 0.5
    c.INPUT.GB_K = 21

    c.DATASET = CN()
    c.DATASET.ROOT = ""
    c.DATASET.NAME = ""
    c.DATASET.SOURCE_DOMAINS = ()
    c.DATASET.TARGET_DOMAINS = ()
    c.DATASET.NUM_LABELED = -1
    c.DATASET.NUM_SHOTS = -1  # >= 1 samples a few-shot training set
    c.DATASET.VAL_PERCENT = 0.1
    c.DATASET.STL10_FOLD = -1
    c.DATASET.CIFAR_C_TYPE = ""
    c.DATASET.CIFAR_C_LEVEL = 1
    c.DATASET.ALL_AS_UNLABELED = False

    c.DATALOADER = CN()
    c.DATALOADER.NUM_WORKERS = 4
    c.DATALOADER.K_TRANSFORMS = 1
    c.DATALOADER.RETURN_IMG0 = False
    c.DATALOADER.TRAIN_X = CN()
    c.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    c.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    c.DATALOADER.TRAIN_X.N_DOMAIN = 0
    c.DATALOADER.TRAIN_X.N_INS = 16
    c.DATALOADER.TRAIN_U = CN()
    c.DATALOADER.TRAIN_U.SAME_AS_X = True
    c.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
    c.DATALOADER.TRAIN_U.BATCH_SIZE = 32
    c.DATALOADER.TRAIN_U.N_DOMAIN = 0
    c.DATALOADER.TRAIN_U.N_INS = 16
    c.DATALOADER.TEST = CN()
    c.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    c.DATALOADER.TEST.BATCH_SIZE = 32

    c.MODEL = CN()
    c.MODEL.INIT_WEIGHTS = ""  # a checkpoint whose matching tensors initialise the model
    c.MODEL.BACKBONE = CN()
    c.MODEL.BACKBONE.NAME = ""  # CLIP name (RN50, ViT-B/16, ...) or a path to a local .pt
    c.MODEL.BACKBONE.PRETRAINED = True
    c.MODEL.HEAD = CN()
    c.MODEL.HEAD.NAME = ""
    c.MODEL.HEAD.HIDDEN_LAYERS = ()
    c.MODEL.HEAD.ACTIVATION = "relu"
    c.MODEL.HEAD.BN = True
    c.MODEL.HEAD.DROPOUT = 0.0

    c.OPTIM = CN()
    c.OPTIM.NAME = "adam"
    c.OPTIM.LR = 0.0003
    c.OPTIM.WEIGHT_DECAY = 5e-4
    c.OPTIM.MOMENTUM = 0.9
    c.OPTIM.SGD_DAMPNING = 0
    c.OPTIM.SGD_NESTEROV = False
    c.OPTIM.RMSPROP_ALPHA = 0.99
    c.OPTIM.ADAM_BETA1 = 0.9
    c.OPTIM.ADAM_BETA2 = 0.999
    c.OPTIM.STAGED_LR = False
    c.OPTIM.NEW_LAYERS = ()
    c.OPTIM.BASE_LR_MULT = 0.1
    c.OPTIM.LR_SCHEDULER = "single_step"
    c.OPTIM.STEPSIZE = (-1,)  # -1: the whole run is one step
    c.OPTIM.GAMMA = 0.1
    c.OPTIM.MAX_EPOCH = 10
    c.OPTIM.WARMUP_EPOCH = -1  # <= 0: no warm-up
    c.OPTIM.WARMUP_TYPE = "linear"  # constant or linear
    c.OPTIM.WARMUP_CONS_LR = 1e-5
    c.OPTIM.WARMUP_MIN_LR = 1e-5
    c.OPTIM.WARMUP_RECOUNT = True  # the main schedule starts its count after warm-up

    c.TRAIN = CN()
    c.TRAIN.CHECKPOINT_FREQ = 0  # keep a numbered checkpoint every N epochs (0: last only)
    c.TRAIN.PRINT_FREQ = 10
    c.TRAIN.COUNT_ITER = "train_x"

    c.TEST = CN()
    c.TEST.EVALUATOR = "Classification"
    c.TEST.PER_CLASS_RESULT = False
    c.TEST.COMPUTE_CMAT = False
    c.TEST.NO_TEST = False
    c.TEST.SPLIT = "test"  # test or val
    c.TEST.FINAL_MODEL = "last_step"  # last_step or best_val

    c.TRAINER = CN()
    c.TRAINER.NAME = ""
    return c


def add_engine_keys(cfg: CN) -> CN:
    """Add the keys every PLPP run understands, on either backend; existing keys are kept."""
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if "SUBSAMPLE_CLASSES" not in cfg.DATASET:
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new (base-to-new protocol)
    if "TEST_PER_CLASS" not in cfg.DATASET:
        cfg.DATASET.TEST_PER_CLASS = -1  # > 0: evaluate on the first N test images of each class (quick runs)
    if "DETERMINISTIC" not in cfg:
        cfg.DETERMINISTIC = False  # torch deterministic algorithms, no cudnn benchmark
    if "DISTRIBUTED" not in cfg:
        cfg.DISTRIBUTED = CN()
        cfg.DISTRIBUTED.BACKEND = ""  # "" picks nccl on CUDA, gloo on CPU (torchrun runs only)
        cfg.DISTRIBUTED.SHARD_CLASSES = False  # split the text pass over ranks by class
    if was_frozen:
        cfg.freeze()
    return cfg


FINAL_MODELS = ("last_step", "best_val")
TEST_SPLITS = ("test", "val")


def check_engine_cfg(cfg: CN) -> None:
    """Refuse engine keys whose value has no meaning (one line naming the key and the choices)."""
    for key, value, choices in (("TEST.FINAL_MODEL", cfg.TEST.FINAL_MODEL, FINAL_MODELS),
                                ("TEST.SPLIT", cfg.TEST.SPLIT, TEST_SPLITS)):
        if value not in choices:
            raise ValueError(f"{key} '{value}' is not valid; choose one of {', '.join(choices)}")


def get_cfg_default() -> CN:
    """A fresh copy of the default config (Dassl's keys plus the engine's own)."""
    return add_engine_keys(_dassl_defaults())
