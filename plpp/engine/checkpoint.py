"""Checkpoint files: tensors and plain numbers only, written atomically, loaded with ``weights_only``.

A file is first written to ``<name>.tmp-<pid>`` and then renamed, so a crash never leaves a half
file under a checkpoint name; the ``checkpoint`` pointer beside it is updated only afterwards. A
kill can leave such temporary files behind: :func:`remove_stale_temp_files` clears them when the
next run takes the folder.
"""

from __future__ import annotations

import os
import os.path as osp
import pickle
import random
import re
import shutil
import zipfile
from typing import Any

import numpy as np
import torch

FORMAT = "plpp-checkpoint/1"
BEST_FILE = "model-best.pth.tar"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, unsafe, or for another model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that exists but cannot be read (truncated or damaged)."""


#: Temporary files of an interrupted atomic write: ``<name>.tmp-<pid>`` (checkpoints), ``<name>.tmp.<pid>`` (text).
TEMP_FILE = re.compile(r".+\.tmp[-.]\d+$")
NUMBERED = re.compile(r"^model\.pth\.tar-(\d+)$")


def save_checkpoint(state: dict, fpath: str) -> None:
    """Write ``state`` to ``fpath`` atomically (temp file in the same folder, fsync, rename)."""
    os.makedirs(osp.dirname(fpath) or ".", exist_ok=True)
    tmp = f"{fpath}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fpath)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def copy_file_atomic(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in ``dst``'s folder (fsync, rename)."""
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def load_checkpoint(fpath: str, pickled_objects: str = "refuse") -> dict:
    """Load a checkpoint on the CPU without executing pickled code; clear errors for bad files.

    ``pickled_objects="refuse"`` (resuming, our own files) stops at a file that holds pickled Python
    objects. ``"skip"`` (evaluating or initialising from another codebase's checkpoint, e.g. a Dassl run
    whose ``scheduler`` pickles its successor scheduler) reads such a file with the restricted reader of
    :mod:`plpp.restricted_io` instead: every object becomes an inert record (never built, no code run),
    the tensors and plain values come back, and one log line names what was skipped.
    """
    if pickled_objects not in ("refuse", "skip"):
        raise ValueError(f"pickled_objects must be 'refuse' or 'skip', got {pickled_objects!r}")
    if not osp.isfile(fpath):
        raise CheckpointError(f"Checkpoint not found: {fpath}. Check --model-dir and --load-epoch.")
    try:
        state = torch.load(fpath, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if pickled_objects == "skip":
            return _load_skipping_objects(fpath)
        raise CheckpointError(
            f"Checkpoint {fpath} contains pickled Python objects, which are never loaded because loading "
            "them can run arbitrary code. Re-save it with tensors and numbers only (for Dassl checkpoints: "
            "keep only 'state_dict'), or retrain."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptCheckpointError(f"Checkpoint {fpath} is truncated or corrupt ({reason}).") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {fpath} holds a {type(state).__name__}, expected a dict")
    return state


def _load_skipping_objects(fpath: str) -> dict:
    """A checkpoint with pickled objects, read by the restricted reader with every object skipped."""
    from plpp.restricted_io import RestrictedLoadError, load_restricted

    from .utils import logger

    try:
        state = load_restricted(fpath, unknown="skip", what=f"Checkpoint {fpath}")
    except RestrictedLoadError as exc:
        raise CorruptCheckpointError(str(exc)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {fpath} holds a {type(state).__name__}, expected a dict")
    skipped = sorted(skipped_object_names(state))
    logger.info(f"{fpath} holds pickled Python objects; they were skipped, never built: {', '.join(skipped)}")
    return state


def skipped_object_names(value: Any, found: set[str] | None = None) -> set[str]:
    """The class names of the objects the restricted reader skipped in ``value`` (dicts, lists, tuples)."""
    from plpp.restricted_io import SkippedObject

    found = set() if found is None else found
    if isinstance(value, SkippedObject) or (isinstance(value, type) and issubclass(value, SkippedObject)):
        found.add(value.name)  # an object, or a class or function the file only names
    elif isinstance(value, dict):
        for item in value.values():
            skipped_object_names(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            skipped_object_names(item, found)
    return found


def require_fields(state: dict, fpath: str, fields: list[str], purpose: str) -> None:
    """Raise one :class:`CheckpointError` naming ``fpath`` and the first of ``fields`` it lacks."""
    for name in fields:
        if name not in state:
            held = ", ".join(sorted(map(str, state))[:8]) or "nothing"
            raise CheckpointError(
                f"Checkpoint {fpath} has no '{name}' field, which {purpose} needs (it holds: {held}). It was not "
                "written by a training run of this engine or Dassl; point to the output folder of such a run.")


def numbered_checkpoints(directory: str) -> dict[int, str]:
    """Epoch → path of each ``model.pth.tar-<epoch>`` in ``directory``."""
    if not osp.isdir(directory):
        return {}
    found = {}
    for name in os.listdir(directory):
        match = NUMBERED.match(name)
        if match:
            found[int(match.group(1))] = osp.join(directory, name)
    return found


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete temporary files that an interrupted atomic write left in ``directory`` and its sub-folders.

    Call it only while holding the folder's run lock: then no live writer owns such a file.
    """
    removed = []
    if not osp.isdir(directory):
        return removed
    for folder in [directory] + [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]:
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and TEMP_FILE.match(entry.name):
                os.remove(entry.path)
                removed.append(entry.path)
    return removed


def extract_state_dict(state: dict, fpath: str) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint: ``state['state_dict']`` or a bare state dict."""
    sd = state.get("state_dict", state)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{fpath} has no 'state_dict' of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load strictly; on a mismatch raise one error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state_dict)) if own[k].shape != state_dict[k].shape]
    if missing or unexpected or shaped:
        parts = []
        if shaped:
            parts.append("shape mismatch: " + "; ".join(shaped))
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected))
        raise CheckpointError(
            f"{source} does not fit this model ({' | '.join(parts)}). It was probably saved by another "
            "trainer, backbone or prompt setting (e.g. N_CTX, CSC with a different number of classes)."
        )
    model.load_state_dict(state_dict, strict=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain numbers (``weights_only``-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
