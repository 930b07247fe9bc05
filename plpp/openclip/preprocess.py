"""``INPUT.*`` from an open_clip model's preprocessing config, unless the user set them.

Every trainer config sets OpenAI CLIP's preprocessing (224 px, CLIP's mean/std, bicubic). For an
``open_clip:`` backbone, each of ``INPUT.SIZE``, ``PIXEL_MEAN``, ``PIXEL_STD`` and ``INTERPOLATION`` that
still holds OpenAI's value takes the model's (from its architecture and tag configs, no weights read); any
other value is the user's and is kept, so a size that differs from the model's stays one clear error when
the model is loaded.
"""

from __future__ import annotations

OPENAI_SIZE = (224, 224)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OPENAI_INTERPOLATION = "bicubic"
#: open_clip's interpolation names → the engine's (``random`` is a training-time choice; bicubic at test).
INTERPOLATIONS = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "random": "bicubic"}


def _same(a, b) -> bool:
    a, b = tuple(float(x) for x in a), tuple(float(x) for x in b)
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def model_input(pp: dict) -> dict:
    """The engine's ``INPUT`` values of an open_clip preprocessing config."""
    size = pp["size"]
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    return {"SIZE": size, "PIXEL_MEAN": [float(x) for x in pp["mean"]], "PIXEL_STD": [float(x) for x in pp["std"]],
            "INTERPOLATION": INTERPOLATIONS.get(pp.get("interpolation", "bicubic"), "bicubic")}


def input_from_model(cfg, pp: dict) -> list[str]:
    """Set the ``INPUT`` keys of ``cfg`` still at OpenAI's values to the model's (``cfg`` must be mutable);
    returns one note per key changed."""
    wanted = model_input(pp)
    openai = {"SIZE": OPENAI_SIZE, "PIXEL_MEAN": OPENAI_MEAN, "PIXEL_STD": OPENAI_STD}
    notes = []
    for key, default in openai.items():
        if _same(cfg.INPUT[key], default) and not _same(wanted[key], default):
            notes.append(f"INPUT.{key} {list(wanted[key])} (the model's)")
            cfg.INPUT[key] = wanted[key]
    if cfg.INPUT.INTERPOLATION == OPENAI_INTERPOLATION and wanted["INTERPOLATION"] != OPENAI_INTERPOLATION:
        notes.append(f"INPUT.INTERPOLATION {wanted['INTERPOLATION']} (the model's)")
        cfg.INPUT.INTERPOLATION = wanted["INTERPOLATION"]
    return notes


def describe_input(cfg, pp: dict) -> str:
    """One log line: the model's preprocessing, and which ``INPUT`` values differ from it (the user's)."""
    wanted = model_input(pp)
    differ = [f"INPUT.{k} {list(cfg.INPUT[k]) if k != 'INTERPOLATION' else cfg.INPUT[k]}" for k in wanted
              if (cfg.INPUT[k] != wanted[k] if k == "INTERPOLATION" else not _same(cfg.INPUT[k], wanted[k]))]
    line = (f"open_clip preprocessing: {wanted['SIZE'][0]} px, mean {wanted['PIXEL_MEAN']}, std "
            f"{wanted['PIXEL_STD']}, {wanted['INTERPOLATION']}")
    if pp.get("resize_mode", "shortest") != "shortest":
        line += f" (the model resizes by '{pp['resize_mode']}'; the engine resizes the shortest side and crops)"
    return line + (f"; set by the user instead: {', '.join(differ)}" if differ else "")
