#!/usr/bin/env bash
# Base-to-new generalisation for every seed in $SEEDS (default "1 2 3"): base2new_train.sh, then
# base2new_test.sh, per seed. Runs finished with the same config are skipped, so the script can be rerun
# after a failure (a folder holding a run made with another config stops it, naming the keys that differ).
#
#   bash scripts/plpp/base2new.sh DATASET [TRAINER] [CFG] [KEY VALUE ...]
#   DATA=/data bash scripts/plpp/base2new.sh eurosat PLPP_MaPLe
#
# TRAINER and CFG as for base2new_train.sh. KEY VALUE options go to both steps.
# Environment: DATA (or --data DIR), OUTPUT (default output), SEEDS, PYTHON, DRY_RUN=1 (or --dry-run).
# Summarise with: python -m plpp.results base2new $OUTPUT
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS DATASET.SUBSAMPLE_CLASSES)
plpp_parse "base2new.sh [--data DIR] [--dry-run] DATASET [TRAINER] [CFG] [KEY VALUE ...]" 1 2 "$@"
plpp_require_data
plpp_seeds
for SEED in "${PLPP_SEEDS[@]}"; do
  bash "$PLPP_SCRIPTS/base2new_train.sh" "${ARGS[0]}" "$SEED" "${ARGS[1]}" "${ARGS[2]}" "${OPTS[@]}"
  bash "$PLPP_SCRIPTS/base2new_test.sh" "${ARGS[0]}" "$SEED" "${ARGS[1]}" "${ARGS[2]}" "${OPTS[@]}"
done
