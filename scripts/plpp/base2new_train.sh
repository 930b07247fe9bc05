#!/usr/bin/env bash
# Base-to-new, step 1: train on the base classes (first half of the sorted labels), 16 shots, one seed;
# the base-class test accuracy is measured at the end of training.
#
#   bash scripts/plpp/base2new_train.sh DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]
#   DATA=/data bash scripts/plpp/base2new_train.sh oxford_pets 1 PLPP_CoCoOp
#
# TRAINER  PLPP (default), CoOp, CoCoOp, MaPLe, IVLP, PromptSRC, KgCoOp, ProGrad and PLPP_<host>
# CFG      default per trainer (PLPP_<host> as its host): CoOp/PLPP vit_b16_ctxv1 (vit_b16_ep50_ctxv1 on
#          ImageNet), CoCoOp vit_b16_c4_ep10_batch1_ctxv1, MaPLe vit_b16_c2_ep5_batch4_2ctx, IVLP and
#          PromptSRC vit_b16_c2_ep20_batch4_4+4ctx, KgCoOp vit_b16_ep100_ctxv1, ProGrad vit_b16_ep100
#          (vit_b16_ep50 on ImageNet)
# Environment: DATA (or --data DIR), OUTPUT (default output), PYTHON, DRY_RUN=1 (or --dry-run).
# Output: $OUTPUT/base2new/train_base/<DATASET>/shots_16/<TRAINER>/<CFG>/seed<SEED> (skipped when
# finished with the same config; a folder holding another config's run stops the script, naming the keys).
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS DATASET.SUBSAMPLE_CLASSES)
plpp_parse "base2new_train.sh [--data DIR] [--dry-run] DATASET SEED [TRAINER] [CFG] [KEY VALUE ...]" 2 2 "$@"
plpp_base2new_setup
plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" "$SEED" "$B2N_TRAIN_DIR"
plpp_run "$B2N_TRAIN_DIR" train "${PLPP_CMD[@]}" DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base "${OPTS[@]}"
