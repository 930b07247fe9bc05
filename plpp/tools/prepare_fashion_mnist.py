"""Prepare Fashion-MNIST once: ``python -m plpp.tools.prepare_fashion_mnist --root DIR``.

Uses the dataset reader (``plpp.datasets.fashion_mnist``): the IDX files are taken from
``DIR/fashion-mnist/``, else from ``/usr/share/datasets/fashion-mnist/`` (Debian/Ubuntu package
``dataset-fashion-mnist``), else downloaded; the 70,000 images are then written as PNGs with the split
file (skipped when already done). Exit status 0 when ready, 1 with one message saying how to get the
files otherwise.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.prepare_fashion_mnist",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True,
                        help="data root (DATASET.ROOT); the dataset goes to ROOT/fashion-mnist")
    args = parser.parse_args(argv)

    from plpp.datasets import idx
    from plpp.datasets.fashion_mnist import materialize
    from plpp.datasets.splits import DatasetError
    from plpp.engine.utils import setup_logger

    setup_logger()
    dataset_dir = osp.join(osp.abspath(osp.expanduser(args.root)), "fashion-mnist")
    searched = [dataset_dir, *idx.SYSTEM_DIRS]
    had_files = any(idx.find_idx_files(folder) for folder in searched)
    try:
        split = materialize(dataset_dir)
    except DatasetError as exc:
        if had_files:
            print(f"error: {exc}", file=sys.stderr)
        else:
            names = ", ".join(f"{name}.gz" for name in idx.IDX_FILES.values())
            print(f"error: Fashion-MNIST not found in {' or '.join(searched)} and the download failed. Install it "
                  f"with `sudo apt-get install dataset-fashion-mnist` (files in {idx.DEBIAN_DIR}), or put the four "
                  f"files {names} (from https://github.com/zalandoresearch/fashion-mnist) in {dataset_dir}/.",
                  file=sys.stderr)
        return 1
    sizes = ", ".join(f"{len(split[k]):,} {k}" for k in ("train", "val", "test"))
    print(f"Fashion-MNIST ready in {dataset_dir} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
