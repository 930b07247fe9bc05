"""open_clip backbones: ``MODEL.BACKBONE.NAME open_clip:ARCH@TAG`` or ``open_clip:ARCH@/path/file``.

Only this package imports ``open_clip`` (the optional extra ``pip install -e ".[openclip]"``). It loads
a model (:mod:`.loading`), wraps it in the attribute surface the hosts already use for ``clip.model.CLIP``
(:mod:`.model`), and adapts its text tower to the shared text encoder (:mod:`.text`) and its ViT image
tower to vision prompts (:mod:`.vision`); hosts never learn which library their backbone comes from.
"""

from __future__ import annotations

from .names import OPEN_CLIP_PREFIX, OpenClipName, import_open_clip, is_open_clip_name, parse_open_clip_name

__all__ = ["OPEN_CLIP_PREFIX", "OpenClipName", "import_open_clip", "is_open_clip_name", "load_open_clip",
           "parse_open_clip_name"]


def load_open_clip(name: str, setting: str = "MODEL.BACKBONE.NAME"):
    """The wrapped open_clip model named by ``name`` (fp32, eval mode, on the CPU); see :mod:`.loading`."""
    from .loading import load_open_clip as load

    return load(name, setting)
