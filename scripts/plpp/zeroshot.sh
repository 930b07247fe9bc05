#!/usr/bin/env bash
# Zero-shot CLIP (hand-crafted prompt per dataset, nothing trained): --eval-only on the full test set.
#
#   bash scripts/plpp/zeroshot.sh DATASET [CFG] [KEY VALUE ...]
#   DATA=/data bash scripts/plpp/zeroshot.sh oxford_pets            # ViT-B/16 (CoOp's vit_b16)
#   DATA=/data bash scripts/plpp/zeroshot.sh eurosat "" DATASET.SUBSAMPLE_CLASSES new
#
# CFG      a config in configs/trainers/CoOp/ (backbone and TRAINER.COOP.PREC); default vit_b16
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run),
#   ZS_TRAINER (ZeroshotCLIP, or ZeroshotCLIP2 for the 7-template ensemble).
# Output: $OUTPUT/<ZS_TRAINER>/<CFG>/<DATASET> (skipped when finished); with DATASET.SUBSAMPLE_CLASSES
#   base or new: $OUTPUT/<ZS_TRAINER>/<CFG>/<DATASET>_<base|new>.
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

plpp_parse "zeroshot.sh [--data DIR] [--dry-run] DATASET [CFG] [KEY VALUE ...]" 1 1 "$@"
DATASET=${ARGS[0]}
plpp_require_data
DATASET_CONFIG=$(plpp_dataset_config "$DATASET")
ZS_TRAINER=${ZS_TRAINER:-ZeroshotCLIP}
plpp_is_zeroshot "$ZS_TRAINER" || plpp_die "ZS_TRAINER must be ZeroshotCLIP or ZeroshotCLIP2, got '$ZS_TRAINER'"
plpp_resolve "$ZS_TRAINER" "${ARGS[1]}" zeroshot "$DATASET" 0
DIR="$OUTPUT/$TRAINER/$CFG/$DATASET"
for ((i = 0; i < ${#OPTS[@]}; i += 2)); do
  if [[ ${OPTS[i]} == DATASET.SUBSAMPLE_CLASSES && ${OPTS[i + 1]} != all ]]; then
    DIR+="_${OPTS[i + 1]}"
  fi
done
plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" 1 "$DIR"
plpp_run "$DIR" eval "${PLPP_CMD[@]}" --eval-only "${OPTS[@]}"
