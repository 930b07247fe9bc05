#!/usr/bin/env bash
# Zero-shot CLIP (hand-crafted prompt per dataset, nothing trained): --eval-only on the full test set.
#
#   bash scripts/plpp/zeroshot.sh DATASET [TRAINER] [CFG] [KEY VALUE ...] [--dry-run]
#   DATA=/data bash scripts/plpp/zeroshot.sh oxford_pets            # ViT-B/16 (CoOp's vit_b16)
#   DATA=/data bash scripts/plpp/zeroshot.sh eurosat "" "" DATASET.SUBSAMPLE_CLASSES new
#
# TRAINER  ZeroshotCLIP (default; or ZS_TRAINER) or ZeroshotCLIP2 (the 7-template ensemble)
# CFG      a config in configs/trainers/CoOp/ (backbone and TRAINER.COOP.PREC); default vit_b16
# The positional order is the one of every script: DATASET, TRAINER, CFG (TRAINER before CFG).
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run),
#   ZS_TRAINER (the default TRAINER).
# Output: $OUTPUT/<TRAINER>/<CFG>/<DATASET> (skipped when finished with the same config); with
#   DATASET.SUBSAMPLE_CLASSES base or new: $OUTPUT/<TRAINER>/<CFG>/<DATASET>_<base|new>.
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

plpp_parse "zeroshot.sh [--data DIR] [--dry-run] DATASET [TRAINER] [CFG] [KEY VALUE ...]" 1 2 "$@"
DATASET=${ARGS[0]}
plpp_require_data
DATASET_CONFIG=$(plpp_dataset_config "$DATASET")
ZS_TRAINER=${ARGS[1]:-${ZS_TRAINER:-ZeroshotCLIP}}
plpp_check_trainer "$ZS_TRAINER"
plpp_is_zeroshot "$ZS_TRAINER" || plpp_usage_error "zeroshot.sh evaluates ZeroshotCLIP or ZeroshotCLIP2, got '$ZS_TRAINER'"
plpp_resolve "$ZS_TRAINER" "${ARGS[2]}" zeroshot "$DATASET" 0
DIR="$OUTPUT/$TRAINER/$CFG/$DATASET"
SUBSAMPLE=$(plpp_opt_value DATASET.SUBSAMPLE_CLASSES)
if [[ -n $SUBSAMPLE && $SUBSAMPLE != all ]]; then
  DIR+="_$SUBSAMPLE"
fi
plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" 1 "$DIR"
plpp_run "$DIR" eval "${PLPP_CMD[@]}" --eval-only "${OPTS[@]}"
