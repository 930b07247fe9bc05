"""Train or evaluate a CLIP prompt learner; the same command line as CoOp's ``train.py``.

Example: python train.py --root $DATA --trainer PLPP --dataset-config-file configs/datasets/oxford_pets.yaml \
    --config-file configs/trainers/PLPP/vit_b16_ep50.yaml --output-dir output/pets/PLPP/seed1 --seed 1
"""

import sys

try:
    from plpp.engine.cli import main
except (ValueError, ImportError) as exc:  # a bad PLPP_ENGINE is reported like any other user error
    if "PLPP_ENGINE" not in str(exc):
        raise
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
