"""Shared benchmark helpers: CLIP architectures with random weights, timing, and step peak memory."""

from __future__ import annotations

import statistics
import time
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from plpp.clip_utils import import_clip

# Architecture hyper-parameters of the OpenAI checkpoints (random weights: speed and memory only).
ARCHS = {
    "tiny": dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                 transformer_layers=2),
    "vit_b16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                    transformer_layers=12),
    "vit_b32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                    transformer_layers=12),
}


def random_clip(arch: str, seed: int = 0) -> torch.nn.Module:
    """``clip.model.CLIP`` of the named architecture with random weights, fp32, eval mode."""
    torch.manual_seed(seed)
    return import_clip().model.CLIP(**ARCHS[arch]).float().eval()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created while active (weights that existed before are not counted).

    Works on any device, including the CPU where torch keeps no allocator statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or storage.nbytes() == 0:
            return
        self._seen.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)

        def release(k=key, n=nbytes, tracker=self):
            tracker._seen.discard(k)
            tracker.live -= n

        weakref.finalize(storage, release)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t.is_sparse:
                self._track(t)
        return out


def peak_mb(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory (MiB) of one call of ``step`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with PeakTensorMemory() as tracker:
        step()
    return tracker.peak / 2**20


def alternate_timing(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device,
                     warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each step, run in alternation after warm-up (fair under drift)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def print_report(report: dict, as_json: bool) -> None:
    """Print a benchmark's result: one JSON object, or aligned ``key: value`` lines."""
    import json

    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    for key, value in report.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        print(f"{key:>24}: {value}")


def imagenet_classnames(n: int) -> list[str]:
    """The first ``n`` of ImageNet's 1000 category names, from torchvision's weights metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if not 1 <= n <= len(names):
        raise SystemExit(f"--classes must be between 1 and {len(names)} (ImageNet's class names), got {n}")
    return names[:n]
