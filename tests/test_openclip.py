"""open_clip backbones: name forms and refusals, parity with the clip package, every host, one ViT-B-32 run.

Tiny architectures are registered with open_clip in-process (``add_model_config``); their random weights are
written by ``python -m plpp.tools.random_clip --open-clip`` and loaded as ``open_clip:ARCH@/path/file``.
Tests that need open_clip skip without it; the "install the extra" refusal runs either way.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode as CN

import plpp.datasets  # noqa: F401  (registers FashionMNIST)
from plpp.clip_utils import ClipWeightsError, encode_image_with_prompts, load_clip, tokenize
from plpp.engine import build_trainer, get_cfg_default
from plpp.perplexity import perplexity_losses
from plpp.trainers import extend_cfg, finalize_cfg
from plpp.trainers.coop import CustomCLIP
from plpp.trainers.ivlp import IVLPCLIP
from plpp.trainers.maple import MaPLeCLIP
from tests.conftest import PYTHON, REPO, TINY_OPTS, build_tiny_clip, subprocess_env, write_fashion_mnist

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}
#: Tiny architectures: OpenAI's layout (``TINY_CLIP``'s dims), and one that differs wherever open_clip can.
ARCHS = {
    "plpp-tiny-openai": {"embed_dim": 32, "quick_gelu": True,
                         "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
                         "text_cfg": _TEXT},
    "plpp-tiny-custom": {"embed_dim": 48, "custom_text": True,
                         "vision_cfg": {"image_size": 48, "layers": 3, "width": 64, "patch_size": 16,
                                        "ls_init_value": 0.5},
                         "text_cfg": {**_TEXT, "context_length": 24, "layers": 3, "ls_init_value": 0.5,
                                      "proj_bias": True}},
    "plpp-tiny-avgpool": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                          "patch_size": 16, "pool_type": "avg"},
                          "text_cfg": _TEXT},
    "plpp-tiny-timm": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                                       "timm_pool": "", "timm_proj": "linear", "image_size": 32},
                       "text_cfg": _TEXT},
    "plpp-tiny-siglip": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                         "text_cfg": {**_TEXT, "no_causal_mask": True, "pool_type": "last"}},
}
CLASSNAMES = ["cat", "golden retriever", "sea_lion", "fire truck"]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_open_clip_name_without_the_package_says_what_to_install(tiny_clip_file):
    """Without open_clip installed (hidden here with ``sys.modules``), the trainers load OpenAI's CLIP (nothing
    else imports open_clip), and an ``open_clip:`` name is one line."""
    code = ("import sys; sys.modules['open_clip'] = None\n"
            "import plpp.trainers, plpp.provenance\n"
            "from plpp.clip_utils import ClipWeightsError, load_clip\n"
            f"load_clip({str(tiny_clip_file)!r})\n"
            "try:\n    load_clip('open_clip:ViT-B-32@laion2b_s34b_b79k')\n"
            "except ClipWeightsError as exc:\n    print(exc)\n")
    res = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    line = res.stdout.strip()
    assert "\n" not in line and "open_clip package is not installed" in line and '".[openclip]"' in line


# --- everything below needs open_clip ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for arch, config in ARCHS.items():
        (folder / f"{arch}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return open_clip


@pytest.fixture(scope="module")
def weights(oc, tmp_path_factory) -> dict[str, Path]:
    """Random weights of every tiny architecture but SigLIP's, written by ``random_clip --open-clip``."""
    from plpp.tools.random_clip import main

    folder = tmp_path_factory.mktemp("open_clip_weights")
    files = {}
    for arch in ARCHS:
        if arch != "plpp-tiny-siglip":
            files[arch] = folder / f"{arch}.pt"
            assert main(["--open-clip", arch, "-o", str(files[arch]), "--seed", "3", "--fp32"]) == 0
    return files


def _name(arch: str, path) -> str:
    return f"open_clip:{arch}@{path}"


def test_random_clip_writes_a_marked_file_that_loads(weights, capsys):
    state = torch.load(weights["plpp-tiny-custom"], weights_only=True)
    assert state["plpp_origin"]["kind"] == "random" and state["plpp_origin"]["arch"] == "open_clip:plpp-tiny-custom"
    model = load_clip(_name("plpp-tiny-custom", weights["plpp-tiny-custom"]))
    assert model.context_length == 24 and model.visual.input_resolution == 48
    assert tokenize(["a photo of a cat."], model).shape == (1, 24)


def test_safetensors_and_open_clip_training_checkpoints_load(oc, weights, tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file  # installed with open_clip

    state = torch.load(weights["plpp-tiny-openai"], weights_only=True)["state_dict"]
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "epoch_3.pt")
    image = torch.randn(1, 3, 32, 32)
    features = [load_clip(_name("plpp-tiny-openai", path)).encode_image(image)
                for path in (weights["plpp-tiny-openai"], tmp_path / "w.safetensors", tmp_path / "epoch_3.pt")]
    for other in features[1:]:
        torch.testing.assert_close(other, features[0])


@pytest.mark.parametrize("name,words", [
    ("open_clip:plpp-tiny-openai", ["randomly initialised backbone is refused", "random_clip --open-clip"]),
    ("open_clip:plpp-tiny-nosuch@x", ["is not an open_clip architecture", "close matches"]),
    ("open_clip:ViT-B-32@nosuchtag", ["is not a pretrained tag", "laion2b_s34b_b79k"]),
    ("open_clip:@laion2b", ["names no architecture"]),
    ("open_clip:hf-hub:timm/ViT-B-16-SigLIP", ["'hf-hub:' model names", "are not supported"]),
    ("open_clip:plpp-tiny-openai@/nonexistent/w.pt", ["does not exist"]),
    ("open_clip:plpp-tiny-siglip@/nonexistent/w.pt", ["no causal attention mask"]),
    ("open_clip:ViT-B-16-SigLIP@webli", ["no causal attention mask"]),
])
def test_refusals_are_one_line(oc, name, words):
    with pytest.raises(ClipWeightsError) as info:
        load_clip(name)
    line = _one_line(info.value)
    assert all(w in line for w in words), line


def test_unreadable_and_mismatched_files_are_one_line(oc, weights, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ClipWeightsError, match="Cannot read open_clip weights") as info:
        load_clip(_name("plpp-tiny-openai", garbage))
    _one_line(info.value)
    with pytest.raises(ClipWeightsError, match="does not fit open_clip's plpp-tiny-custom") as info:
        load_clip(_name("plpp-tiny-custom", weights["plpp-tiny-openai"]))
    _one_line(info.value)


def test_a_tag_not_downloadable_says_which_file_to_put_where(oc, weights, tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE), a tag names the URL and the cache path; a file put there is then used."""
    cache = tmp_path / "cache"
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "PLPP_OPEN_CLIP_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "hf")}
    code = ("from plpp.clip_utils import ClipWeightsError, resolve_weights\n"
            "try:\n    print(resolve_weights('open_clip:ViT-B-32@laion2b_s34b_b79k'))\n"
            "except ClipWeightsError as exc:\n    print('ERROR', exc)\n")
    res = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    target = cache / "ViT-B-32" / "laion2b_s34b_b79k" / "open_clip_pytorch_model.bin"
    line = res.stdout.strip()
    assert line.startswith("ERROR") and "\n" not in line, res.stdout + res.stderr[-2000:]
    assert str(target) in line and "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in line
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    monkeypatch.setenv("PLPP_OPEN_CLIP_CACHE", str(cache))
    from plpp.clip_utils import resolve_weights

    assert resolve_weights("open_clip:ViT-B-32@laion2b_s34b_b79k") == str(target)


# --- the text side: open_clip's own encode_text, every pass --------------------------------------------

def test_text_encoder_equals_open_clip_encode_text(oc, weights):
    """Custom text tower, layer scales, a biased projection, 24-token context: fast and full passes equal
    open_clip's own ``encode_text``, and the host's prompts are built with the model's tokenizer."""
    from plpp.text import TextEncoder, TextPrompts, text_layout

    path = weights["plpp-tiny-custom"]
    model = load_clip(_name("plpp-tiny-custom", path))
    reference = oc.create_model("plpp-tiny-custom", pretrained=str(path)).eval()
    tokens = tokenize([f"a photo of a {c}." for c in CLASSNAMES], model)
    encoder = TextEncoder(model)
    with torch.no_grad():
        expected = reference.encode_text(tokens)
        for mode in ("fast", "full"):
            encoder.mode = mode
            got = encoder(TextPrompts.from_full(text_layout(tokens), model.token_embedding(tokens))).features[0]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_image(torch.ones(2, 3, 48, 48)),
                                   reference.encode_image(torch.ones(2, 3, 48, 48)), rtol=1e-5, atol=1e-5)


# --- parity: the same tensors in a clip-package CLIP and an open_clip model --------------------------------

@pytest.fixture(scope="module")
def twin_models(oc, tmp_path_factory):
    """A tiny ``clip.model.CLIP`` and the open_clip model loaded from its state dict (OpenAI's key names are
    open_clip's for this layout, so the mapping is the identity: checked here)."""
    clip_model = build_tiny_clip(seed=5)
    state = clip_model.state_dict()
    own = oc.create_model("plpp-tiny-openai").state_dict()
    assert set(state) == set(own)
    path = tmp_path_factory.mktemp("twin") / "twin.pt"
    torch.save(state, path)
    return clip_model, load_clip(_name("plpp-tiny-openai", path))


def _cfg(**opts) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 2
    for node in (cfg.TRAINER.IVLP, cfg.TRAINER.PROMPTSRC):
        node.PROMPT_DEPTH_TEXT = node.PROMPT_DEPTH_VISION = 2
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 1
    cfg.TRAINER.LINEAR_PROBE.MAX_ITER, cfg.TRAINER.LINEAR_PROBE.SEARCH_STEPS = 50, 2
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


@pytest.mark.parametrize("host", ["CoOp", "MaPLe"])
def test_same_tensors_give_the_same_logits_and_plpp_terms(twin_models, host):
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = []
    for clip_model in twin_models:
        torch.manual_seed(0)
        model = (CustomCLIP(_cfg(), CLASSNAMES, clip_model) if host == "CoOp"
                 else MaPLeCLIP(_cfg(), CLASSNAMES, clip_model))
        logits, ctx, states = model.forward_with_states(image)
        terms = perplexity_losses(ctx, states, model.token_embedding.weight, topk=5, temperature=0.1)
        results.append((logits, states, terms["ppl"], terms["ippl"]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_vision_prompts_on_open_clip_vit(twin_models, weights):
    clip_model, open_model = twin_models
    image = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encode_image_with_prompts(open_model.visual, image), clip_model.encode_image(image),
                               rtol=1e-5, atol=1e-5)
    first, deep = torch.randn(2, 64), [torch.randn(2, 64)]
    torch.testing.assert_close(encode_image_with_prompts(open_model.visual, image, first, deep),
                               encode_image_with_prompts(clip_model.visual, image, first, deep), rtol=1e-5, atol=1e-5)
    for arch, reason in (("plpp-tiny-timm", "timm model"), ("plpp-tiny-avgpool", "pools with 'avg'")):
        model = load_clip(_name(arch, weights[arch]))
        model.encode_image(torch.randn(1, 3, 32, 32))  # CoOp's image side runs on any tower
        for host, words in ((MaPLeCLIP, "MaPLe needs a ViT backbone"), (IVLPCLIP, "PROMPT_DEPTH_VISION 2 needs a ViT")):
            with pytest.raises(ValueError, match=words) as info:
                host(_cfg(), CLASSNAMES, model)
            assert reason in _one_line(info.value) and arch in str(info.value)


# --- preprocessing ----------------------------------------------------------------------------------------

OPENAI_INPUT = {"INPUT.SIZE": (224, 224), "INPUT.INTERPOLATION": "bicubic",
                "INPUT.PIXEL_MEAN": [0.48145466, 0.4578275, 0.40821073],
                "INPUT.PIXEL_STD": [0.26862954, 0.26130258, 0.27577711]}


def test_input_comes_from_the_model_unless_the_user_set_it(oc, weights):
    """Only configs are read: the size from the architecture, mean/std from the tag (ViT-L-14's LAION tag
    normalises with 0.5); values the user set stay."""
    cfg = _cfg(**{**OPENAI_INPUT, "MODEL.BACKBONE.NAME": _name("plpp-tiny-custom", weights["plpp-tiny-custom"])})
    finalize_cfg(cfg)
    assert tuple(cfg.INPUT.SIZE) == (48, 48) and list(cfg.INPUT.PIXEL_MEAN) == OPENAI_INPUT["INPUT.PIXEL_MEAN"]
    cfg = _cfg(**{**OPENAI_INPUT, "MODEL.BACKBONE.NAME": "open_clip:ViT-L-14@laion2b_s32b_b82k",
                  "INPUT.PIXEL_STD": [0.3, 0.3, 0.3]})
    finalize_cfg(cfg)
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.5, 0.5, 0.5] and list(cfg.INPUT.PIXEL_STD) == [0.3, 0.3, 0.3]
    assert tuple(cfg.INPUT.SIZE) == (224, 224) and cfg.INPUT.INTERPOLATION == "bicubic"


# --- every host trains a step and evaluates -------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=4, test_per_class=2)
    return root


def _trainer_cfg(name, data_root, backbone, out, **opts) -> CN:
    cfg = _cfg(**{"TRAINER.NAME": name, "DATASET.NAME": "FashionMNIST", "DATASET.ROOT": str(data_root),
                  "MODEL.BACKBONE.NAME": backbone, "OUTPUT_DIR": str(out), "TRAINER.COOP.PREC": "fp32",
                  "TRAINER.COCOOP.PREC": "fp32", "TRAINER.MAPLE.PREC": "fp32", "DATALOADER.TRAIN_X.BATCH_SIZE": 4,
                  "USE_CUDA": False, **dict(zip(TINY_OPTS[::2], TINY_OPTS[1::2])), **opts})
    cfg.merge_from_list(["INPUT.SIZE", "(48, 48)"])
    cfg.freeze()
    return cfg


HOSTS = ["CoOp", "CoCoOp", "MaPLe", "IVLP", "PromptSRC", "KgCoOp", "ProGrad"]
PROMPT_TRAINERS = HOSTS + [("PLPP" if host == "CoOp" else f"PLPP_{host}") for host in HOSTS]


@pytest.mark.parametrize("name", PROMPT_TRAINERS + ["ZeroshotCLIP", "ZeroshotCLIP2", "LinearProbeCLIP"])
def test_every_host_trains_and_evaluates(tmp_path, data_root, weights, name):
    """A training step (or the probe's fit) and the evaluation of every trainer on the custom-text, layer-scale,
    24-token, biased-projection open_clip model."""
    backbone = _name("plpp-tiny-custom", weights["plpp-tiny-custom"])
    trainer = build_trainer(_trainer_cfg(name, data_root, backbone, tmp_path))
    if name in PROMPT_TRAINERS:
        trainer.batch_idx, trainer.num_batches = 0, 2
        summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
        assert all(torch.isfinite(torch.tensor(v)) for v in summary.values())
        assert ("loss_ppl" in summary) == name.startswith("PLPP")
    if name == "LinearProbeCLIP":
        trainer.train()
        assert json.loads((tmp_path / "results.json").read_text())["total"] == 8
    else:
        assert 0.0 <= float(trainer.test()) <= 100.0


def test_a_frozen_config_at_openai_values_takes_the_model_preprocessing(tmp_path, data_root, weights):
    """A Dassl checkout's own train.py never calls finalize_cfg: the trainers' config check does it."""
    backbone = _name("plpp-tiny-custom", weights["plpp-tiny-custom"])
    cfg = _trainer_cfg("CoOp", data_root, backbone, tmp_path)
    cfg.defrost()
    cfg.merge_from_list([x for kv in OPENAI_INPUT.items() for x in kv])
    cfg.freeze()
    trainer = build_trainer(cfg)
    assert tuple(trainer.cfg.INPUT.SIZE) == (48, 48) and trainer.cfg.is_frozen()


def test_input_size_mismatch_is_one_clear_error(tmp_path, data_root, weights):
    backbone = _name("plpp-tiny-custom", weights["plpp-tiny-custom"])
    cfg = _trainer_cfg("CoOp", data_root, backbone, tmp_path)
    cfg.defrost()
    cfg.INPUT.SIZE = (32, 32)
    with pytest.raises(ValueError, match=r"INPUT.SIZE \(32, 32\) does not match the backbone's input resolution 48"):
        build_trainer(cfg)


# --- one standard ViT-B-32, end to end through train.py ----------------------------------------------------

def test_vit_b_32_end_to_end(oc, tmp_path):
    """Random ViT-B-32 weights (open_clip's architecture, 224 px from its config), PLPP for one epoch on a few
    images through ``train.py``; prints its time."""
    start = time.time()
    weights_file = tmp_path / "vit_b_32.pt"
    res = subprocess.run([PYTHON, "-m", "plpp.tools.random_clip", "--open-clip", "ViT-B-32", "-o", str(weights_file)],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "random-weight open_clip ViT-B-32" in res.stdout, res.stderr[-2000:]
    root = tmp_path / "data"
    write_fashion_mnist(root, n_classes=2, train_per_class=2, test_per_class=1)
    out = tmp_path / "run"
    args = ["--root", str(root), "--seed", "1", "--trainer", "PLPP",
            "--dataset-config-file", str(REPO / "configs/datasets/fashion_mnist.yaml"),
            "--config-file", str(REPO / "configs/trainers/PLPP/vit_b16_ep50.yaml"), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", f"open_clip:ViT-B-32@{weights_file}", "DATALOADER.NUM_WORKERS", "0",
            "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "TRAINER.COOP.N_CTX", "2"]
    res = subprocess.run([PYTHON, "train.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "open_clip preprocessing: 224 px" in log and "Finish training" in log and "* total: 2" in log
    record = json.loads((out / "results.json").read_text())["backbone_weights"]
    assert record["kind"] == "random" and record["file"] == str(weights_file) and len(record["sha256"]) == 64
    assert record["open_clip"]["arch"] == "ViT-B-32" and record["open_clip"]["tag"] is None
    print(f"ViT-B-32 end to end (weights + one epoch + test): {time.time() - start:.1f} s")


# --- the text pass on open_clip's tower: fast = full, checkpointing, deep prompts, precision ------------------

@pytest.mark.parametrize("host", ["CoOp", "MaPLe"])
def test_fast_pass_and_checkpointing_equal_the_reference_on_open_clip(weights, host):
    """Logits, context states and gradients agree across passes and checkpointing (MaPLe: deep prompts in
    the batch-first blocks)."""
    model_cls = CustomCLIP if host == "CoOp" else MaPLeCLIP
    clip_model = load_clip(_name("plpp-tiny-custom", weights["plpp-tiny-custom"]))
    image = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    outputs = []
    for mode, use_checkpoint in (("full", False), ("fast", False), ("fast", True), ("full", True)):
        torch.manual_seed(0)
        model = model_cls(_cfg(), CLASSNAMES, clip_model)
        model.text_encoder.mode, model.text_encoder.use_checkpoint = mode, use_checkpoint
        logits, _, states = model.forward_with_states(image)
        (logits.sum() + states.sum()).backward()
        grads = [p.grad for p in model.prompt_learner.parameters()]
        outputs.append((logits.detach(), states.detach(), *grads))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_half_and_bf16_run_on_open_clip(weights):
    """``PREC fp16`` casts with open_clip's own half conversion (layer scales included); bf16 autocasts."""
    from plpp.clip_utils import Precision

    clip_model = load_clip(_name("plpp-tiny-custom", weights["plpp-tiny-custom"]))
    image = torch.randn(2, 3, 48, 48)
    with Precision("bf16", torch.device("cpu")).autocast():
        assert torch.isfinite(CustomCLIP(_cfg(), CLASSNAMES, clip_model)(image).float()).all()
    clip_model.convert_weights_fp16()
    blocks = clip_model.transformer.resblocks
    assert blocks[0].attn.in_proj_weight.dtype == torch.float16 and blocks[0].ls_1.gamma.dtype == torch.float16
    assert clip_model.text_projection.dtype == torch.float16 and clip_model.dtype == torch.float16
    logits = CustomCLIP(_cfg(), CLASSNAMES, clip_model)(image)
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


# --- train.py with your own architecture ($PLPP_OPEN_CLIP_CONFIGS): preprocessing, checkpoint, eval-only ------

def test_train_py_with_a_registered_architecture(oc, weights, tmp_path):
    """The architecture is known to train.py through $PLPP_OPEN_CLIP_CONFIGS; INPUT.SIZE 224 of the trainer
    config becomes the model's 48 (recorded in config.yaml); the saved prompt, evaluated by two torchrun
    processes with the text encoder sharded by class, gives the same result."""
    from tests.test_distributed import free_port

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "plpp-tiny-custom.json").write_text(json.dumps(ARCHS["plpp-tiny-custom"]))
    env = {**subprocess_env(), "PLPP_OPEN_CLIP_CONFIGS": str(configs)}
    root = tmp_path / "data"
    write_fashion_mnist(root, n_classes=3, train_per_class=4, test_per_class=2)

    def run(out, *flags, launch=(), extra=()):
        args = [PYTHON, *launch, "train.py", "--root", str(root), "--seed", "1", "--trainer", "PLPP", *flags,
                "--dataset-config-file", str(REPO / "configs/datasets/fashion_mnist.yaml"),
                "--config-file", str(REPO / "configs/trainers/PLPP/vit_b16_ep50.yaml"), "--output-dir", str(out),
                "MODEL.BACKBONE.NAME", _name("plpp-tiny-custom", weights["plpp-tiny-custom"]),
                "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "4",
                "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4", *extra]
        res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return (out / "log.txt").read_text()

    log = run(tmp_path / "run")
    assert "open_clip preprocessing: 48 px" in log and "Prompt words (epoch 1):" in log
    saved = CN.load_cfg((tmp_path / "run" / "config.yaml").read_text())
    assert tuple(saved.INPUT.SIZE) == (48, 48)
    run(tmp_path / "eval", "--eval-only", "--model-dir", str(tmp_path / "run"), "--load-epoch", "1",
        launch=("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())),
        extra=("DISTRIBUTED.SHARD_CLASSES", "True"))
    got, want = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("eval", "run"))
    for key in ("total", "correct", "accuracy", "macro_f1"):
        assert got[key] == want[key], key


def test_a_wrong_configs_path_is_one_line(oc, tmp_path, monkeypatch):
    monkeypatch.setenv("PLPP_OPEN_CLIP_CONFIGS", str(tmp_path / "nowhere"))
    with pytest.raises(ClipWeightsError, match="PLPP_OPEN_CLIP_CONFIGS names .*nowhere, which is neither") as info:
        load_clip("open_clip:plpp-tiny-custom@/x.pt")
    _one_line(info.value)
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setenv("PLPP_OPEN_CLIP_CONFIGS", str(tmp_path / "broken.json"))
    with pytest.raises(ClipWeightsError, match="cannot read the open_clip architecture config .*broken.json") as info:
        load_clip("open_clip:plpp-tiny-custom@/x.pt")
    _one_line(info.value)
