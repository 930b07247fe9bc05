"""Write a CLIP weights file with random weights, for checking the pipeline without the real ones.

``python -m plpp.tools.random_clip --arch ViT-B/32 -o clip_random.pt`` builds the real
``clip.model.CLIP`` with the architecture of the named OpenAI model (or ``tiny``, a very small one
with 32 px input) and saves its state dict; use the file as ``MODEL.BACKBONE.NAME`` (or the demo's
``BACKBONE``). Nothing learned is in it: accuracies obtained with it are a pipeline check, not a result.
The file says so itself: the state dict is saved beside a ``plpp_origin`` marker of kind ``random``
(:mod:`plpp.provenance`), so ``results.json`` and ``plpp-results`` label every number made with it.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from collections.abc import Sequence

import torch

from plpp.provenance import KIND_RANDOM, ORIGIN_KEY, origin_marker

_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)

#: ``clip.model.CLIP`` arguments of the released models (``build_model`` infers the same from the weights).
ARCHS: dict[str, dict] = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     **_TEXT),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     **_TEXT),
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, **_TEXT),
    "RN101": dict(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                  vision_patch_size=None, **_TEXT),
    "tiny": dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2),
}


def build_random_clip(arch: str, seed: int = 0) -> torch.nn.Module:
    """A ``clip.model.CLIP`` of ``arch`` with CLIP's own random initialisation (fp32, eval mode)."""
    from plpp.clip_utils import import_clip

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    return import_clip().model.CLIP(**ARCHS[arch]).float().eval()


def save_random_clip(arch: str, path: str, seed: int = 0, half: bool = True) -> int:
    """Save the state dict of a random ``arch`` CLIP, marked as random, to ``path``; returns the number of
    parameters.

    ``half`` stores the weights in the dtypes of the released files (``clip.model.convert_weights``:
    linear, conv and attention weights in fp16), halving the file size.
    """
    from plpp.clip_utils import import_clip

    model = build_random_clip(arch, seed)
    n_params = sum(p.numel() for p in model.parameters())
    if half:
        import_clip().model.convert_weights(model)
    marker = origin_marker(KIND_RANDOM, "plpp.tools.random_clip", arch=arch, seed=seed,
                           dtype="fp16" if half else "fp32")
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save({ORIGIN_KEY: marker, "state_dict": model.state_dict()}, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return n_params


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.random_clip", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B/32", choices=list(ARCHS), help="architecture (default ViT-B/32)")
    parser.add_argument("-o", "--output", required=True, help="file to write (e.g. clip_random.pt)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument("--fp32", action="store_true", help="keep every tensor in fp32 (twice the file size)")
    args = parser.parse_args(argv)
    n_params = save_random_clip(args.arch, args.output, args.seed, half=not args.fp32)
    size = osp.getsize(args.output) / 2**20
    print(f"wrote {args.output}: random-weight CLIP {args.arch} ({n_params / 1e6:.1f} M parameters, {size:.0f} MiB, "
          f"{ARCHS[args.arch]['image_resolution']} px input). Pipeline checks only: it has learned nothing, so "
          "accuracies obtained with it are not results.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
