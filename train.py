"""Train or evaluate a CLIP prompt learner; the same command line as CoOp's ``train.py``.

Example: python train.py --root $DATA --trainer PLPP --dataset-config-file configs/datasets/oxford_pets.yaml \
    --config-file configs/trainers/PLPP/vit_b16_ep50.yaml --output-dir output/pets/PLPP/seed1 --seed 1
"""

import sys

from plpp.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
