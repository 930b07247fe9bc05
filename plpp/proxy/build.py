"""Build a proxy world into a folder once: the datasets as PNGs with CoOp split files, then the pretrained CLIP.

``DIR/proxy-clip.pt``   weights: ``{"plpp_origin": {"kind": "proxy_world", ...}, "state_dict": ...}``
``DIR/data/``           the ``--root`` of the ``ProxyWorld`` (photos) and ``ProxyWorldDrawing`` datasets
``DIR/proxy-world.json`` the manifest, written last: what was built, its checksums and zero-shot accuracy

A build is cached: when the manifest matches the requested spec and the files still match their
checksums, nothing is redone. The same spec gives the same bytes on the same machine and torch build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import os.path as osp
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from plpp.provenance import KIND_LABELS, KIND_PROXY, origin_marker

from .pretrain import ARCH, PretrainConfig, pretrain, zero_shot_accuracy
from .world import STYLES, render, sample_scenes, world_classes

FORMAT = "plpp-proxy-world/1"
WEIGHTS_FILE = "proxy-clip.pt"
MANIFEST_FILE = "proxy-world.json"
LOCK_FILE = ".proxy-world.lock"
DATA_DIR = "data"
#: Dataset folder under ``DIR/data`` for each rendering style (the readers' ``dataset_dir``).
DATASET_FOLDERS: dict[str, str] = {"photo": "proxy_world", "drawing": "proxy_world_drawing"}
IMAGE_DIR = "images"
ORIGIN_KIND = KIND_PROXY
ORIGIN_TOOL = "plpp.tools.proxy_world"
LABEL = KIND_LABELS[KIND_PROXY]
#: CPU threads of every build: matrix products round differently with other thread counts, so a fixed
#: count is what makes the same seed give the same bytes whatever OMP_NUM_THREADS says. One thread: on a
#: shared machine two threads spend most of their time waiting for each other.
BUILD_THREADS = 1


class ProxyWorldError(RuntimeError):
    """The output folder cannot hold a proxy world; the message names it and says what to do."""


def split_file(style: str) -> str:
    return f"split_{DATASET_FOLDERS[style]}.json"


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides the bytes of a build: pretraining and the images per class of each split."""

    pretrain: PretrainConfig
    per_class: dict[str, int] = field(default_factory=dict)  # split -> images per class (each style)
    quick: bool = False

    def to_dict(self) -> dict:
        return {"format": FORMAT, "quick": self.quick, "arch": ARCH, "pretrain": self.pretrain.to_dict(),
                "per_class": dict(self.per_class), "threads": BUILD_THREADS,
                "classes": [c.name for c in world_classes()]}


def build_spec(quick: bool = False, seed: int = 0) -> BuildSpec:
    """The full world (the measured one) or the quick one (tests, CI): fewer steps and images."""
    if quick:
        return BuildSpec(PretrainConfig(steps=220, seed=seed), {"train": 16, "val": 4, "test": 20}, quick=True)
    return BuildSpec(PretrainConfig(steps=300, seed=seed), {"train": 32, "val": 8, "test": 40}, quick=False)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def _write_json(obj: dict, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")

    _write_atomic(path, write)


@contextlib.contextmanager
def _locked(out_dir: str) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (a second build of the same folder waits, then finds the cache)."""
    with open(osp.join(out_dir, LOCK_FILE), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def render_split(style: str, split: str, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class for one style and split: ``(uint8 [N, 3, H, W], labels [N])``."""
    offset = {"train": 11, "val": 12, "test": 13}[split] + 10 * STYLES.index(style)
    gen = torch.Generator().manual_seed(1000 * seed + offset)
    labels = torch.arange(len(world_classes())).repeat_interleave(per_class)
    scenes = sample_scenes(len(labels), gen, classes=labels, drawing_fraction=float(style == "drawing"))
    return render(scenes, gen), labels


def write_dataset(data_root: str, style: str, spec: BuildSpec) -> tuple[dict, str, torch.Tensor, torch.Tensor]:
    """Write one style's PNGs and split file; returns ``(split, SHA-256 of all PNGs, test images, test labels)``."""
    folder = osp.join(data_root, DATASET_FOLDERS[style])
    image_root = osp.join(folder, IMAGE_DIR)
    classes = world_classes()
    for c in classes:
        os.makedirs(osp.join(image_root, c.folder), exist_ok=True)
    split: dict[str, list] = {}
    digest = hashlib.sha256()
    test = (torch.empty(0), torch.empty(0))
    for name, per_class in spec.per_class.items():
        images, labels = render_split(style, name, per_class, spec.pretrain.seed)
        entries = []
        arrays = images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, H, W, 3] for PIL
        for i, (pixels, label) in enumerate(zip(arrays, labels.tolist())):
            rel = f"{classes[label].folder}/{name}_{i:05d}.png"
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
            digest.update(buffer.getvalue())
            with open(osp.join(image_root, rel), "wb") as f:
                f.write(buffer.getvalue())
            entries.append([rel, label, classes[label].name])
        split[name] = entries
        if name == "test":
            test = (images, labels)
    _write_json(split, osp.join(folder, split_file(style)))
    return split, digest.hexdigest(), test[0], test[1]


def zero_shot_report(model: torch.nn.Module, tests: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Zero-shot accuracy ("a photo of a {}.") of each style's test set: all classes, base and new halves."""
    names = [c.name for c in world_classes()]
    half = len(names) // 2
    report = {}
    for style, (images, labels) in tests.items():
        base = labels < half
        report[style] = {
            "all": round(zero_shot_accuracy(model, images, labels, names), 2),
            "base": round(zero_shot_accuracy(model, images[base], labels[base], names[:half]), 2),
            "new": round(zero_shot_accuracy(model, images[~base], labels[~base] - half, names[half:]), 2),
        }
    return report


def save_weights(model: torch.nn.Module, path: str, origin: dict) -> None:
    """The weights file of contract 1: the origin marker beside the CLIP state dict (fp32 tensors)."""
    payload = {"plpp_origin": origin, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    _write_atomic(path, lambda tmp: torch.save(payload, tmp))


def read_manifest(out_dir: str) -> dict | None:
    path = osp.join(out_dir, MANIFEST_FILE)
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def cache_problem(out_dir: str, manifest: dict | None, spec: BuildSpec) -> str | None:
    """Why the folder's build cannot be reused for ``spec`` (None when it can)."""
    if manifest is None:
        return "no finished build"
    if manifest.get("spec") != spec.to_dict():
        kind = "quick" if manifest.get("spec", {}).get("quick") else "full"
        return f"it holds a different build ({kind}, seed {manifest.get('spec', {}).get('pretrain', {}).get('seed')})"
    weights = osp.join(out_dir, WEIGHTS_FILE)
    if not osp.isfile(weights) or sha256_file(weights) != manifest.get("weights_sha256"):
        return f"{weights} is missing or changed"
    for style, digest in manifest.get("split_sha256", {}).items():
        folder = osp.join(out_dir, DATA_DIR, DATASET_FOLDERS[style])
        path = osp.join(folder, split_file(style))
        if not osp.isfile(path) or sha256_file(path) != digest:
            return f"{path} is missing or changed"
        with open(path, encoding="utf-8") as f:
            entries = [e for part in json.load(f).values() for e in part]
        missing = sum(not osp.isfile(osp.join(folder, IMAGE_DIR, e[0])) for e in entries)
        if missing:
            return f"{missing} images of {folder} are missing"
    return None


def _check_out_dir(out_dir: str, manifest: dict | None) -> None:
    if osp.exists(out_dir) and not osp.isdir(out_dir):
        raise ProxyWorldError(f"--out {out_dir} is a file, not a folder; choose a folder for the proxy world")
    if manifest is None:
        for folder in DATASET_FOLDERS.values():
            path = osp.join(out_dir, DATA_DIR, folder)
            if osp.exists(path):
                raise ProxyWorldError(f"{path} exists but {osp.join(out_dir, MANIFEST_FILE)} does not, so it was not "
                                      "written by a finished build of this tool; delete it or choose another --out")


def build_world(out_dir: str, spec: BuildSpec, log: Callable[[str], None] = print) -> tuple[dict, bool]:
    """Build the world of ``spec`` in ``out_dir``, or reuse the build there; returns ``(manifest, built_now)``."""
    out_dir = osp.abspath(osp.expanduser(out_dir))
    _check_out_dir(out_dir, read_manifest(out_dir))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ProxyWorldError(f"cannot create --out {out_dir} ({exc.strerror}); choose a writable folder") from None
    if not os.access(out_dir, os.W_OK):
        raise ProxyWorldError(f"--out {out_dir} is not writable; choose a writable folder")
    with _locked(out_dir):
        manifest = read_manifest(out_dir)
        problem = cache_problem(out_dir, manifest, spec)
        if problem is None:
            return manifest, False
        if manifest is not None:
            log(f"Rebuilding the proxy world in {out_dir}: {problem}")
        threads = torch.get_num_threads()
        torch.set_num_threads(BUILD_THREADS)
        try:
            return _build(out_dir, spec, log), True
        finally:
            torch.set_num_threads(threads)


def _build(out_dir: str, spec: BuildSpec, log: Callable[[str], None]) -> dict:
    start = time.perf_counter()
    manifest_path = osp.join(out_dir, MANIFEST_FILE)
    if osp.exists(manifest_path):
        os.remove(manifest_path)  # from here on the folder holds no finished build
    data_root = osp.join(out_dir, DATA_DIR)
    tests, split_digests, image_digests, counts = {}, {}, {}, {}
    for style in STYLES:
        shutil.rmtree(osp.join(data_root, DATASET_FOLDERS[style]), ignore_errors=True)
        split, image_digests[style], images, labels = write_dataset(data_root, style, spec)
        tests[style] = (images, labels)
        split_digests[style] = sha256_file(osp.join(data_root, DATASET_FOLDERS[style], split_file(style)))
        counts[style] = {k: len(v) for k, v in split.items()}
        log(f"Wrote the {style} images of {DATASET_FOLDERS[style]} ({sum(counts[style].values()):,} PNGs) "
            f"[{time.perf_counter() - start:.0f} s]")
    log(f"Pretraining the proxy CLIP ({spec.pretrain.steps} steps of {spec.pretrain.batch_size} pairs)")
    model = pretrain(spec.pretrain, log=log)
    zero_shot = zero_shot_report(model, tests)
    origin = origin_marker(ORIGIN_KIND, ORIGIN_TOOL, format=FORMAT, label=LABEL, quick=spec.quick,
                           seed=spec.pretrain.seed, steps=spec.pretrain.steps,
                           zero_shot=zero_shot)
    weights = osp.join(out_dir, WEIGHTS_FILE)
    save_weights(model, weights, origin)
    manifest = {"format": FORMAT, "spec": spec.to_dict(), "label": LABEL, "weights": WEIGHTS_FILE,
                "weights_sha256": sha256_file(weights), "data_root": DATA_DIR, "datasets": dict(DATASET_FOLDERS),
                "split_sha256": split_digests, "images_sha256": image_digests, "images": counts, "zero_shot": zero_shot,
                "build_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    _write_json(manifest, manifest_path)
    return manifest


__all__ = ["BuildSpec", "ProxyWorldError", "build_spec", "build_world"]
