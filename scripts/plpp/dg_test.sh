#!/usr/bin/env bash
# Domain generalisation: evaluate the ImageNet model of xd_train.sh on ImageNet-V2, -Sketch, -A and -R
# (xd_test.sh for each of imagenetv2, imagenet_sketch, imagenet_a, imagenet_r).
#
#   bash scripts/plpp/dg_test.sh SEED [TRAINER] [CFG] [KEY VALUE ...]
#
# TRAINER and CFG as for xd_train.sh (same defaults).
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run).
# Output: $OUTPUT/evaluation/<TRAINER>/<CFG>_16shots/<variant>/seed<SEED>
# Summarise with: python -m plpp.results dg $OUTPUT
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.SUBSAMPLE_CLASSES)
plpp_parse "dg_test.sh [--data DIR] [--dry-run] SEED [TRAINER] [CFG] [KEY VALUE ...]" 1 2 "$@"
SEED=${ARGS[0]}
plpp_xd_setup "${ARGS[1]}" "${ARGS[2]}" "$SEED"
for DATASET in imagenetv2 imagenet_sketch imagenet_a imagenet_r; do
  bash "$PLPP_SCRIPTS/xd_test.sh" "$DATASET" "$SEED" "$TRAINER" "$CFG" "${OPTS[@]}"
done
