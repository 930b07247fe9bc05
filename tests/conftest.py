"""Shared fixtures: tiny random-weight CLIPs built with the real ``clip`` package, saved as real files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

TINY_CLIP = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=2)


def build_tiny_clip(seed: int = 0, **overrides) -> torch.nn.Module:
    """A random-weight ``clip.model.CLIP`` (fp32); heads = width // 64 as ``build_model`` infers."""
    from plpp.clip_utils import import_clip

    clip = import_clip()
    torch.manual_seed(seed)
    model = clip.model.CLIP(**{**TINY_CLIP, **overrides})
    return model.float().eval()


def prompt_only_and_perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with only its prompt learner trainable, moved away from its init (seeded by the caller) so
    that every learnable tensor matters in a comparison of passes."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_tiny_clip(path: Path, seed: int = 0, **overrides) -> Path:
    torch.save(build_tiny_clip(seed, **overrides).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> Path:
    """A tiny CLIP state-dict file, usable as MODEL.BACKBONE.NAME."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


def subprocess_env() -> dict:
    """Environment for CLI subprocesses: the repo importable, one thread, the built-in engine."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env.setdefault("PLPP_ENGINE", "builtin")
    return env


PYTHON = sys.executable


def write_idx(path: Path, array) -> None:
    """Write a uint8 array in the IDX format (the Fashion-MNIST/MNIST file format)."""
    import struct

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_fashion_mnist(root: Path, n_classes: int = 4, train_per_class: int = 8, test_per_class: int = 4,
                        seed: int = 0) -> Path:
    """IDX files under ``root/fashion-mnist`` whose classes are easy to tell apart (bands at class rows)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)

    def make(per_class):
        labels = np.repeat(np.arange(n_classes), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(len(labels), 28, 28))
        for i, y in enumerate(labels):
            images[i, 7 * (y % 4) : 7 * (y % 4) + 7, :] = 255 - 20 * (y // 4)
        return images, labels

    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        images, labels = make(per_class)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


# Options that shrink any train.py run to the tiny CLIP and tiny images (later options override these).
TINY_OPTS = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "16",
             "TRAIN.PRINT_FREQ", "1"]


def train_args(data_root, clip_file, out, *, trainer: str = "PLPP", seed: int = 1, flags=(), opts=(),
               config: str = "configs/trainers/PLPP/vit_b16_ep50.yaml") -> list[str]:
    """Arguments of a tiny ``train.py`` run on the test Fashion-MNIST: flags first, then ``KEY VALUE`` options."""
    return ["--root", str(data_root), "--seed", str(seed), "--trainer", trainer, *flags,
            "--dataset-config-file", str(REPO / "configs/datasets/fashion_mnist.yaml"),
            "--config-file", str(REPO / config), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(clip_file), *TINY_OPTS, *opts]


# A small but real training run: 4 classes x 8 shots, 4 images per batch.
SMALL_RUN_OPTS = ["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", "8",
                  "OPTIM.LR", "0.05"]


@pytest.fixture(scope="module")
def small_data_root(tmp_path_factory) -> Path:
    """A Fashion-MNIST root with 4 separable classes, 10 training and 4 test images each."""
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=10, test_per_class=4)
    return root


def kill_when_logged(cmd: list[str], env: dict, log: Path, marker: str, timeout: float = 240) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``log`` contains ``marker`` (fails if it ends first)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and marker in log.read_text():
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:])
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def saved_ctx(run_dir: Path, epoch: int) -> torch.Tensor:
    """The learned context vectors in ``run_dir``'s checkpoint of ``epoch`` (loaded with ``weights_only``)."""
    path = run_dir / "prompt_learner" / f"model.pth.tar-{epoch}"
    return torch.load(path, weights_only=True)["state_dict"]["ctx"]
