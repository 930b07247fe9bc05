#!/usr/bin/env bash
# Cross-dataset and domain generalisation, step 1: train on all 1,000 ImageNet classes, 16 shots, one seed.
#
#   bash scripts/plpp/xd_train.sh SEED [TRAINER] [CFG] [KEY VALUE ...]
#   DATA=/data bash scripts/plpp/xd_train.sh 1 PLPP_MaPLe
#
# TRAINER  PLPP (default), CoOp, CoCoOp, MaPLe, IVLP, PromptSRC, KgCoOp, ProGrad and PLPP_<host>
# CFG      default per trainer (PLPP_<host> as its host): CoOp/PLPP and ProGrad vit_b16_ep50, CoCoOp
#          vit_b16_c4_ep10_batch1_ctxv1, MaPLe vit_b16_c2_ep5_batch4_2ctx_cross_datasets, PromptSRC
#          vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets, IVLP vit_b16_c2_ep20_batch4_4+4ctx, KgCoOp
#          vit_b16_ep100_ctxv1
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run).
# Output: $OUTPUT/imagenet/<TRAINER>/<CFG>_16shots/seed<SEED> (skipped when finished with the same
# config; a folder holding another config's run stops the script); then run
# xd_test.sh (10 target datasets) and dg_test.sh (the 4 ImageNet variants).
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS DATASET.SUBSAMPLE_CLASSES)
plpp_parse "xd_train.sh [--data DIR] [--dry-run] SEED [TRAINER] [CFG] [KEY VALUE ...]" 1 2 "$@"
SEED=${ARGS[0]}
plpp_xd_setup "${ARGS[1]}" "${ARGS[2]}" "$SEED"
DATASET_CONFIG=$(plpp_dataset_config imagenet)
plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" "$SEED" "$XD_MODEL_DIR"
plpp_run "$XD_MODEL_DIR" train "${PLPP_CMD[@]}" DATASET.NUM_SHOTS 16 "${OPTS[@]}"
