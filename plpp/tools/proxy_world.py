"""Build the proxy world: ``python -m plpp.tools.proxy_world --out DIR [--quick] [--seed N]``.

Renders the synthetic datasets and pretrains a small CLIP (the stock ``clip.model.CLIP``) on
image–caption pairs of the same world, on the CPU, then prints its zero-shot accuracy. ``DIR`` then
holds ``proxy-clip.pt`` (use it as ``MODEL.BACKBONE.NAME``) and ``data/`` (the ``--root`` of the
``ProxyWorld`` and ``ProxyWorldDrawing`` datasets). A second call with the same options finds the
build and returns at once; the same seed gives the same bytes on the same machine. Accuracies on this
world measure methods in a controlled world; they are never results about CLIP or real data.
Exit status 0, or 1 with one message when ``DIR`` cannot hold the world.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
import time
from collections.abc import Sequence


def summary(out_dir: str, manifest: dict) -> str:
    """The closing lines: where the weights and data are, and the zero-shot accuracies."""
    zs = manifest["zero_shot"]
    photo, drawing = zs["photo"], zs["drawing"]
    kind = "quick" if manifest["spec"]["quick"] else "full"
    return (f"Proxy world ({kind}) in {out_dir}:\n"
            f"  weights  {osp.join(out_dir, manifest['weights'])}   (MODEL.BACKBONE.NAME)\n"
            f"  data     {osp.join(out_dir, manifest['data_root'])}   (--root: ProxyWorld, ProxyWorldDrawing)\n"
            f"  zero-shot accuracy, 'a photo of a {{}}.': {photo['all']:.1f}% over 48 classes "
            f"(base {photo['base']:.1f}, new {photo['new']:.1f}); drawings {drawing['all']:.1f}% "
            f"(base {drawing['base']:.1f}, new {drawing['new']:.1f}); chance 2.1% over 48, 4.2% over 24\n"
            f"  {manifest['label']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.proxy_world", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the weights and the data")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster build (tests and CI)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and the pretraining (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")

    from plpp.proxy.build import ProxyWorldError, build_spec, build_world

    start = time.perf_counter()

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        manifest, built = build_world(args.out, build_spec(args.quick, args.seed), log=log)
    except ProxyWorldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out_dir = osp.abspath(osp.expanduser(args.out))
    how = f"built in {time.perf_counter() - start:.0f} s" if built else "found (cached build; nothing to do)"
    print(f"{summary(out_dir, manifest)}\n  {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
