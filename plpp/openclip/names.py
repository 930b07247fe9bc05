"""The ``open_clip:`` backbone names, and importing the optional ``open_clip`` package with one clear line."""

from __future__ import annotations

import importlib
import json
import os
import os.path as osp
import types
from typing import NamedTuple

from plpp.clip_utils import ClipWeightsError

OPEN_CLIP_PREFIX = "open_clip:"
INSTALL_HINT = 'pip install -e ".[openclip]" (or: pip install open-clip-torch)'
#: Extra architecture configs (open_clip's JSON format): folders or files, separated by os.pathsep.
CONFIGS_ENV = "PLPP_OPEN_CLIP_CONFIGS"
_registered: set[str] = set()


class OpenClipName(NamedTuple):
    """``open_clip:ARCH`` (``tag`` and ``path`` None), ``open_clip:ARCH@TAG`` or ``open_clip:ARCH@/path/file``."""

    arch: str
    tag: str | None
    path: str | None


def is_open_clip_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(OPEN_CLIP_PREFIX)


def parse_open_clip_name(name: str, setting: str = "MODEL.BACKBONE.NAME") -> OpenClipName:
    """Split ``open_clip:ARCH[@TAG|@PATH]``; a value after ``@`` with a path separator, or that names an
    existing file, is a file (``~`` expanded)."""
    body = name[len(OPEN_CLIP_PREFIX):].strip()
    arch, _, rest = body.partition("@")
    arch, rest = arch.strip(), rest.strip()
    if not arch:
        raise ClipWeightsError(f"{setting} '{name}' names no architecture: use open_clip:ARCH@TAG or "
                               "open_clip:ARCH@/path/to/weights (e.g. open_clip:ViT-B-32@laion2b_s34b_b79k)")
    if ":" in arch:
        raise ClipWeightsError(f"{setting} '{name}': open_clip's '{arch.split(':')[0]}:' model names (Hugging Face "
                               "hub, local folders) are not supported; name a built-in architecture and its weights "
                               "file: open_clip:ARCH@/path/to/open_clip_pytorch_model.bin")
    if not rest:
        return OpenClipName(arch, None, None)
    expanded = osp.expanduser(rest)
    if osp.sep in rest or rest.startswith("~") or osp.isfile(expanded):
        return OpenClipName(arch, None, expanded)
    return OpenClipName(arch, rest, None)


def import_open_clip(name: str = "", setting: str = "MODEL.BACKBONE.NAME") -> types.ModuleType:
    """The ``open_clip`` package, or one line saying how to install it."""
    try:
        module = importlib.import_module("open_clip")
    except ImportError as exc:
        what = f"{setting} '{name}' is an open_clip backbone, but" if name else "This needs open_clip, but"
        raise ClipWeightsError(f"{what} the open_clip package is not installed ({exc}). Install it with: "
                               f"{INSTALL_HINT}") from None
    register_configs(module)
    return module


def register_configs(module: types.ModuleType) -> None:
    """Register the architecture configs named by ``$PLPP_OPEN_CLIP_CONFIGS`` with open_clip (once each), so
    ``open_clip:ARCH`` can name your own architectures (one ``ARCH.json`` each, open_clip's format)."""
    for entry in filter(None, os.environ.get(CONFIGS_ENV, "").split(os.pathsep)):
        path = osp.abspath(osp.expanduser(entry))
        if path in _registered:
            continue
        if not (osp.isdir(path) or (osp.isfile(path) and path.endswith(".json"))):
            raise ClipWeightsError(f"{CONFIGS_ENV} names {path}, which is neither a folder nor a .json file of "
                                   "open_clip architecture configs")
        files = [path] if osp.isfile(path) else [osp.join(path, f) for f in sorted(os.listdir(path))
                                                   if f.endswith(".json")]
        for file in files:  # checked first: open_clip keeps a path it failed to read and rereads it later
            try:
                with open(file, encoding="utf-8") as f:
                    json.load(f)
            except (OSError, ValueError) as exc:
                raise ClipWeightsError(f"{CONFIGS_ENV}: cannot read the open_clip architecture config {file} "
                                       f"({type(exc).__name__}: {exc})") from None
        module.add_model_config(path)
        _registered.add(path)
