#!/usr/bin/env bash
# Cross-dataset transfer, step 2: evaluate the ImageNet model of xd_train.sh on another dataset
# (all its classes, full test set) with --eval-only from its last checkpoint.
#
#   bash scripts/plpp/xd_test.sh DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]
#   for d in caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101; do
#     DATA=/data bash scripts/plpp/xd_test.sh $d 1; done
#
# TRAINER and CFG as for xd_train.sh (same defaults). --load-epoch is read from the model's
# <model>/checkpoint pointer (else OPTIM.MAX_EPOCH of its config.yaml).
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run).
# Model: $OUTPUT/imagenet/<TRAINER>/<CFG>_16shots/seed<SEED>
# Output: $OUTPUT/evaluation/<TRAINER>/<CFG>_16shots/<DATASET>/seed<SEED> (skipped when finished with
# the same config; a folder holding another config's run stops the script, naming the keys).
# Summarise with: python -m plpp.results xd $OUTPUT   (dg for the ImageNet variants)
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.SUBSAMPLE_CLASSES)
plpp_parse "xd_test.sh [--data DIR] [--dry-run] DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]" 2 2 "$@"
DATASET=${ARGS[0]}
SEED=${ARGS[1]}
plpp_xd_setup "${ARGS[2]}" "${ARGS[3]}" "$SEED"
DATASET_CONFIG=$(plpp_dataset_config "$DATASET")
DIR="$OUTPUT/evaluation/$TRAINER/${CFG}_16shots/$DATASET/seed$SEED"
plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" "$SEED" "$DIR"
if ! plpp_done "$DIR" eval "${PLPP_CMD[@]}" --eval-only "${OPTS[@]}"; then
  EPOCH=$(plpp_load_epoch "$XD_MODEL_DIR" "bash scripts/plpp/xd_train.sh $SEED $TRAINER $CFG")
  plpp_exec "${PLPP_CMD[@]}" --eval-only --model-dir "$XD_MODEL_DIR" --load-epoch "$EPOCH" "${OPTS[@]}"
fi
