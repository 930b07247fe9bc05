"""The ``open_clip:`` backbone names, and importing the optional ``open_clip`` package with one clear line."""

from __future__ import annotations

import importlib
import os.path as osp
import types
from typing import NamedTuple

from plpp.clip_utils import ClipWeightsError

OPEN_CLIP_PREFIX = "open_clip:"
INSTALL_HINT = 'pip install -e ".[openclip]" (or: pip install open-clip-torch)'


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
    if not rest:
        return OpenClipName(arch, None, None)
    expanded = osp.expanduser(rest)
    if osp.sep in rest or rest.startswith("~") or osp.isfile(expanded):
        return OpenClipName(arch, None, expanded)
    return OpenClipName(arch, rest, None)


def import_open_clip(name: str = "", setting: str = "MODEL.BACKBONE.NAME") -> types.ModuleType:
    """The ``open_clip`` package, or one line saying how to install it."""
    try:
        return importlib.import_module("open_clip")
    except ImportError as exc:
        what = f"{setting} '{name}' is an open_clip backbone, but" if name else "This needs open_clip, but"
        raise ClipWeightsError(f"{what} the open_clip package is not installed ({exc}). Install it with: "
                               f"{INSTALL_HINT}") from None
