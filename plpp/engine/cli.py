"""The ``train.py`` command line (CoOp's flags and merge order) as an importable function."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import os.path as osp
import sys

from yacs.config import CfgNode

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, RuntimeError,
                                                 FloatingPointError, OSError)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or evaluate a CLIP prompt learner (CoOp-compatible command line).",
        epilog="Trailing KEY VALUE pairs override config keys, e.g. OPTIM.MAX_EPOCH 10 TRAINER.PLPP.TOPK 5.")
    p.add_argument("--root", type=str, default="", help="path to the dataset root (DATASET.ROOT)")
    p.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from (RESUME)")
    p.add_argument("--seed", type=int, default=None, help="random seed; any value >= 0, including 0")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="trainer config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer (TRAINER.NAME)")
    p.add_argument("--backbone", type=str, default="", help="CLIP name or weights file (MODEL.BACKBONE.NAME)")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, default=None, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="build the trainer, then stop")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return p


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys.extend(_all_keys(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"])
    return keys


def _explain_key_error(cfg: CfgNode, exc: Exception, source: str) -> ValueError:
    text = str(exc.args[0]) if exc.args else str(exc)
    if "Non-existent" not in text:
        return ValueError(f"{source}: {text}")
    key = text.split(":")[-1].strip().strip("'\"")
    close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"Unknown config key '{key}' in {source}.{hint}")


def _merge_file(cfg: CfgNode, path: str, what: str) -> None:
    if not osp.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError) as exc:
        raise _explain_key_error(cfg, exc, path) from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """defaults → trainer keys → dataset YAML → trainer YAML → flags → trailing opts → freeze."""
    from plpp.engine import get_cfg_default
    from plpp.trainers import extend_cfg, finalize_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "Dataset config file (--dataset-config-file)")
    if args.config_file:
        _merge_file(cfg, args.config_file, "Trainer config file (--config-file)")
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    opts = args.opts or []
    if len(opts) % 2:
        raise ValueError(f"Trailing options must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as exc:
        raise _explain_key_error(cfg, exc, "the command-line options") from None
    except ValueError as exc:
        raise ValueError(f"Command-line options: {exc}") from None
    finalize_cfg(cfg)
    cfg.freeze()
    return cfg


def run(args: argparse.Namespace) -> None:
    import plpp.datasets  # noqa: F401  (registers the datasets)
    import plpp.trainers  # noqa: F401  (registers the trainers)
    from plpp.engine import BACKEND, DATASET_REGISTRY, TRAINER_REGISTRY, build_trainer, set_random_seed, setup_logger
    from plpp.engine.distributed import init_distributed, is_dist, launched_with_torchrun, shared_random_seed
    from plpp.engine.registry import unknown_name_message
    from plpp.engine.runinfo import check_resume_config, write_run_info
    from plpp.engine.utils import FILE_ONLY, collect_env_info, logger, set_deterministic

    cfg = setup_cfg(args)
    for kind, registry, name in (("trainer (--trainer)", TRAINER_REGISTRY, cfg.TRAINER.NAME),
                                 ("dataset (DATASET.NAME)", DATASET_REGISTRY, cfg.DATASET.NAME)):
        if name not in registry:
            raise ValueError(unknown_name_message(kind, name, registry.registered_names()))
    if launched_with_torchrun():
        if BACKEND == "dassl":
            raise RuntimeError("Multi-process (torchrun) runs need the built-in engine: Dassl has no DDP "
                               "support. Set PLPP_ENGINE=builtin.")
        init_distributed(cfg.DISTRIBUTED.BACKEND)
    if not args.eval_only:
        check_resume_config(cfg, cfg.RESUME or cfg.OUTPUT_DIR)
    if cfg.SEED >= 0:
        logger.debug(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    elif is_dist():  # unseeded, but every rank must draw the same few-shot subset and initial prompt
        set_random_seed(shared_random_seed())
    if cfg.DETERMINISTIC:
        set_deterministic(True)
    setup_logger(cfg.OUTPUT_DIR)
    logger.info("Collecting env info ...\n" + collect_env_info() + f"\nPLPP engine backend: {BACKEND}")
    logger.info("Arguments: " + " ".join(sys.argv[1:]))
    logger.info("Config:\n" + cfg.dump(), extra=FILE_ONLY)
    logger.info(f"Full config: {os.path.join(cfg.OUTPUT_DIR, 'config.yaml')} (also in log.txt)")
    write_run_info(cfg, cfg.OUTPUT_DIR, BACKEND)
    trainer = build_trainer(cfg)
    if args.eval_only:
        if not args.model_dir and trainer.get_model_names():  # trainers with no models (zero-shot) need none
            raise ValueError(f"--eval-only needs --model-dir (the output folder of a training run) for trainer "
                             f"{cfg.TRAINER.NAME}")
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    if not args.no_train:
        trainer.train()


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn user mistakes into one clear message with a non-zero exit code."""
    from plpp.engine.distributed import cleanup_distributed

    args = get_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as exc:
        if os.environ.get("PLPP_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        for handler in logging.getLogger("plpp").handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(logging.makeLogRecord({"msg": f"error: {message}", "levelno": logging.ERROR}))
        return 2
    finally:
        cleanup_distributed()
    return 0
