"""Check that CLIP weights can be had before a long run starts: ``python -m plpp.tools.check_weights NAME``.

``NAME`` is what ``MODEL.BACKBONE.NAME`` takes: an OpenAI model name (found in the cache,
``$PLPP_CLIP_CACHE`` or ``~/.cache/clip``, else downloaded), a local ``.pt`` file, or an open_clip model
(``open_clip:ARCH@TAG``, ``open_clip:ARCH@/path/file``). The weights are
loaded once, so a truncated or foreign file is reported here too, and the file is identified (an
OpenAI release by its checksum, a random-weight or proxy-world file by its marker, see :mod:`plpp.provenance`).
Exit status 0 when usable, 1 with one message (which file is missing and where to put it) otherwise.
``--offline`` looks in the cache only and never downloads (the demo's dry run uses it to choose between
CLIP and the proxy world).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def describe(model) -> str:
    """``ViT, 224 px input, 512-d features, 151.3 M parameters`` for a ``clip.model.CLIP`` (or a wrapped
    open_clip model: the image tower's class when it is not a ViT)."""
    from plpp.clip_utils import is_vision_transformer

    tower = getattr(model.visual, "tower", None)
    kind = "ViT" if is_vision_transformer(model.visual) else type(tower).__name__ if tower is not None else "ResNet"
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return (f"{kind}, {model.visual.input_resolution} px input, {model.text_projection.shape[1]}-d features, "
            f"{n_params:.1f} M parameters")


def cached_or_fail(name: str, setting: str) -> None:
    """Raise ``ClipWeightsError`` unless ``name`` is a local file or an OpenAI model already in the cache."""
    import os.path as osp

    from plpp.clip_utils import ClipWeightsError, clip_cache_dir, clip_models

    if osp.isfile(osp.expanduser(name)) or name not in clip_models():
        return  # a local file, or a name resolve_weights rejects with its own message
    target = osp.join(clip_cache_dir(), osp.basename(clip_models()[name]))
    if not osp.isfile(target):
        raise ClipWeightsError(f"{setting} '{name}': {target} is missing (offline check: nothing is downloaded)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.check_weights", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="CLIP model name (ViT-B/32, ViT-B/16, RN50, ...) or a local .pt file")
    parser.add_argument("--setting", default="MODEL.BACKBONE.NAME",
                        help="how error messages call the value (e.g. BACKBONE for the demo script)")
    parser.add_argument("--offline", action="store_true", help="look in the cache only; never download")
    args = parser.parse_args(argv)

    from plpp.clip_utils import ClipWeightsError, load_clip, resolve_weights
    from plpp.provenance import describe_backbone, identify_backbone

    try:
        if args.offline:
            cached_or_fail(args.name, args.setting)
        path = resolve_weights(args.name, setting=args.setting)
        model = load_clip(args.name if args.name.startswith("open_clip:") else path)
    except ClipWeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"CLIP weights for {args.name}: {path} ({describe(model)})")
    print(describe_backbone(identify_backbone(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
