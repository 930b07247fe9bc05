#!/usr/bin/env bash
# Base-to-new, step 2: evaluate the base-trained model of base2new_train.sh on the new classes
# (second half of the sorted labels), with --eval-only from its last checkpoint.
#
#   bash scripts/plpp/base2new_test.sh DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]
#
# TRAINER and CFG as for base2new_train.sh (same defaults). --load-epoch is the trained epoch count,
# read from the training run's <model>/checkpoint pointer (else OPTIM.MAX_EPOCH of its config.yaml).
# Pass the same KEY VALUE options as for training when they change the model (e.g. the backbone).
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run).
# Output: $OUTPUT/base2new/test_new/<DATASET>/shots_16/<TRAINER>/<CFG>/seed<SEED> (skipped when finished
# with the same config; a folder holding another config's run stops the script).
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS DATASET.SUBSAMPLE_CLASSES)
plpp_parse "base2new_test.sh [--data DIR] [--dry-run] DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]" 2 2 "$@"
plpp_base2new_setup
plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" "$SEED" "$B2N_TEST_DIR"
RUN_OPTS=(DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new "${OPTS[@]}")
if ! plpp_done "$B2N_TEST_DIR" eval "${PLPP_CMD[@]}" --eval-only "${RUN_OPTS[@]}"; then
  EPOCH=$(plpp_load_epoch "$B2N_TRAIN_DIR" "bash scripts/plpp/base2new_train.sh $DATASET $SEED $TRAINER $CFG")
  plpp_exec "${PLPP_CMD[@]}" --eval-only --model-dir "$B2N_TRAIN_DIR" --load-epoch "$EPOCH" "${RUN_OPTS[@]}"
fi
