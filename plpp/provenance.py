"""What produced a CLIP weights file: its SHA-256, whether it is an OpenAI release, and our tools' marker.

A number is only a result when the backbone it came from is known. Files written by our own tools
(``plpp.tools.random_clip``, ``plpp.tools.proxy_world``) carry a marker beside the state dict::

    {"plpp_origin": {"kind": "random", "tool": "plpp.tools.random_clip", ...}, "state_dict": {...}}

and the CLIP loader reads the state dict out of that wrapper. :func:`identify_backbone` gives the record
that ``results.json`` keeps (``backbone_weights``), and :data:`KIND_LABELS` the words tables print
beside numbers that are not results. Importing this module is cheap (no torch, no clip).
"""

from __future__ import annotations

import hashlib
import os
import os.path as osp
from typing import Any

#: Key of the marker in files written by our tools.
ORIGIN_KEY = "plpp_origin"

KIND_OPENAI = "openai"  # SHA-256 equals the checksum in the official download URL of an OpenAI model
KIND_RANDOM = "random"  # written by plpp.tools.random_clip
KIND_PROXY = "proxy_world"  # written by plpp.tools.proxy_world
KIND_OTHER = "other"  # any other file (fine-tuned, converted, foreign, or a marker of an unknown kind)
KINDS = (KIND_OPENAI, KIND_RANDOM, KIND_PROXY, KIND_OTHER)
#: Kinds a marker may claim (an OpenAI release is only ever recognised by its checksum).
MARKER_KINDS = (KIND_RANDOM, KIND_PROXY)

#: What tables and plots print beside a number from non-OpenAI weights.
KIND_LABELS: dict[str, str] = {
    KIND_RANDOM: "random weights: not a result",
    KIND_PROXY: "synthetic proxy world: not a result on real data",
    KIND_OTHER: "weights that are not an OpenAI release",
}

_HASHES: dict[tuple[str, int, int], str] = {}
_LAST_RECORD: dict[str, dict[str, Any]] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a file, computed once per process for each (path, size, mtime).

    ViT-B/16 weights are ~350 MB: the loader's checksum test and the ``results.json`` record share
    one pass over the file.
    """
    real = osp.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def origin_marker(kind: str, tool: str, **fields: Any) -> dict[str, Any]:
    """The ``plpp_origin`` dict a tool saves beside its state dict (plain str/int/float/bool values)."""
    if kind not in MARKER_KINDS:
        raise ValueError(f"origin kind '{kind}' is not one of {', '.join(MARKER_KINDS)}")
    return {"kind": kind, "tool": tool, **fields}


def read_origin(path: str) -> dict[str, Any] | None:
    """The ``plpp_origin`` marker of a ``torch.save``'d weights file, or ``None`` when it has none.

    Tensors are memory-mapped, not read, and only tensors and plain containers are accepted
    (``weights_only``); TorchScript archives, legacy-format and unreadable files have no marker.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any file that is not a plain torch.save'd dict has no marker
        return None
    marker = state.get(ORIGIN_KEY) if isinstance(state, dict) else None
    if not isinstance(marker, dict):
        return None
    return {str(k): v for k, v in marker.items() if isinstance(v, (str, int, float, bool)) or v is None}


def openai_checksums() -> dict[str, str]:
    """SHA-256 → OpenAI model name, from the download URLs of the installed ``clip`` package."""
    from plpp.clip_utils import clip_models

    return {url.split("/")[-2]: name for name, url in clip_models().items()}


def identify_backbone(name: str) -> dict[str, Any]:
    """The ``backbone_weights`` record of ``MODEL.BACKBONE.NAME``.

    ``{"name": as given, "file": the file read, "size": bytes, "sha256": hex, "kind": one of KINDS,
    "release": OpenAI model name or None, "origin": the marker or None}``. ``kind`` is ``openai`` when
    the SHA-256 matches an official checksum, else the marker's kind when it is ``random`` or
    ``proxy_world``, else ``other``. If the file can no longer be read (moved during a run), the
    record made earlier in this process is returned.
    """
    from plpp.clip_utils import ClipWeightsError, resolve_weights

    try:
        path = resolve_weights(name)
        sha = file_sha256(path)
        size = os.path.getsize(path)
    except (OSError, ClipWeightsError):
        if name in _LAST_RECORD:
            return _LAST_RECORD[name]
        raise
    release = openai_checksums().get(sha)
    origin = None if release else read_origin(path)
    if release:
        kind = KIND_OPENAI
    elif origin is not None and origin.get("kind") in MARKER_KINDS:
        kind = str(origin["kind"])
    else:
        kind = KIND_OTHER
    record = {"name": name, "file": osp.abspath(path), "size": size, "sha256": sha, "kind": kind,
              "release": release, "origin": origin}
    _LAST_RECORD[name] = record
    return record


def describe_backbone(record: dict[str, Any]) -> str:
    """One log line: the file, its checksum and what it is."""
    what = (f"OpenAI release {record['release']}" if record["kind"] == KIND_OPENAI
            else KIND_LABELS.get(record["kind"], record["kind"]))
    return f"Backbone weights: {record['file']} (sha256 {record['sha256'][:12]}…): {what}"
