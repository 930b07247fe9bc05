"""Small helpers with Dassl's names: seeding, logging, JSON, files, meters, accuracy."""

from __future__ import annotations

import json
import logging
import os
import os.path as osp
import platform
import random
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image

LOGGER_NAME = "plpp"
logger = logging.getLogger(LOGGER_NAME)


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Any integer ≥ 0 is a seed, 0 included."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_deterministic(enabled: bool) -> None:
    """Turn PyTorch's deterministic algorithms on (and cudnn benchmark off), or back to defaults."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


FILE_ONLY = {"file_only": True}  # ``logger.info(msg, extra=FILE_ONLY)``: long dumps go to log.txt only


class _ConsoleFilter(logging.Filter):
    """Keeps records marked ``file_only`` (e.g. the full config dump) off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class _RankFilter(logging.Filter):
    """Lets only rank 0 write, so multi-process runs print and log once."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .distributed import is_main_process

        return is_main_process()


def setup_logger(output: str | None = None) -> logging.Logger:
    """Send the ``plpp`` logger to stdout and, when ``output`` is given, append to ``output/log.txt``.

    ``output`` may be a directory or a file path ending in ``.txt``/``.log``.  The file is appended
    to, so a resumed run keeps one log with its whole history.
    """
    log = logging.getLogger(LOGGER_NAME)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(message)s")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    stream.addFilter(_RankFilter())
    stream.addFilter(_ConsoleFilter())
    log.addHandler(stream)
    if output:
        fpath = output if output.endswith((".txt", ".log")) else osp.join(output, "log.txt")
        mkdir_if_missing(osp.dirname(fpath) or ".")
        handler = logging.FileHandler(fpath, mode="a", encoding="utf-8")
        handler.setFormatter(fmt)
        handler.addFilter(_RankFilter())
        log.addHandler(handler)
    return log


def collect_env_info() -> str:
    """Versions and devices, as plain text for ``env.txt`` and the log."""
    import torchvision

    lines = [
        f"Python: {sys.version.split()[0]} ({platform.platform()})",
        f"PyTorch: {torch.__version__}",
        f"torchvision: {torchvision.__version__}",
        f"NumPy: {np.__version__}",
        f"Pillow: {Image.__version__}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}")
    lines.append(f"CPU threads: {torch.get_num_threads()}")
    return "\n".join(lines)


def mkdir_if_missing(dirname: str) -> None:
    os.makedirs(dirname, exist_ok=True)


def check_isfile(fpath: str) -> bool:
    return osp.isfile(fpath)


def listdir_nohidden(path: str, sort: bool = False) -> list[str]:
    """Entries of ``path`` not starting with a dot."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def read_json(fpath: str) -> Any:
    with open(fpath, encoding="utf-8") as f:
        return json.load(f)


def write_json(obj: Any, fpath: str) -> None:
    """Write JSON atomically (indent 4, Dassl's separators)."""
    mkdir_if_missing(osp.dirname(fpath) or ".")
    tmp = f"{fpath}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, fpath)


def write_text_atomic(text: str, fpath: str) -> None:
    mkdir_if_missing(osp.dirname(fpath) or ".")
    tmp = f"{fpath}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, fpath)


def read_image(path: str) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file raises an error naming it."""
    if not osp.exists(path):
        raise FileNotFoundError(f"Image not found: {path}. Check DATASET.ROOT and the dataset layout.")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt files
        raise OSError(f"Cannot read image {path} ({exc}). Replace or remove this file.") from exc


class AverageMeter:
    """Running value and average of a scalar."""

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    """A group of :class:`AverageMeter`, printed as ``name val (avg)``."""

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: dict | None) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("forward_backward must return a dict of floats or scalar tensors")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(v)

    def __str__(self) -> str:
        return self.delimiter.join(f"{name} {m.val:.4f} ({m.avg:.4f})" for name, m in self.meters.items())


def compute_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Iterable[int] = (1,)) -> list:
    """Top-k accuracies in percent, one 1-element tensor per k (Dassl's contract)."""
    topk = tuple(topk)
    maxk = max(topk)
    batch_size = target.size(0)
    if isinstance(output, (tuple, list)):
        output = output[0]
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res


def count_num_param(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
