#!/usr/bin/env bash
# Few-shot training and evaluation (CoOp's protocol), one run per seed in $SEEDS (default "1 2 3").
#
#   bash scripts/plpp/main.sh DATASET SHOTS [TRAINER] [CFG] [KEY VALUE ...] [--dry-run]
#   DATA=/data bash scripts/plpp/main.sh imagenet 16            # PLPP, vit_b16_ep50, seeds 1 2 3
#   SEEDS=1 bash scripts/plpp/main.sh oxford_pets 4 CoOp "" OPTIM.MAX_EPOCH 10
#
# DATASET  a config name in configs/datasets/ (imagenet, oxford_pets, fashion_mnist, ...)
# SHOTS    training images per class (DATASET.NUM_SHOTS)
# TRAINER  PLPP (default), CoOp, CoCoOp, MaPLe, IVLP, PromptSRC, KgCoOp, ProGrad, LinearProbeCLIP, and
#          PLPP_<host> for CoCoOp, MaPLe, IVLP, PromptSRC, KgCoOp, ProGrad
# CFG      a config in configs/trainers/<TRAINER>/ ("" or - for the default). CoOp and PLPP default
#          to CoOp's rule: 1 shot vit_b16_ep50, 2/4 shots vit_b16_ep100, 8/16 shots vit_b16 (200
#          epochs), ImageNet always vit_b16_ep50, and so does ProGrad; PromptSRC to its few-shot config
#          (with GPA_MEAN 45, GPA_STD 5 on Cars, Flowers, Aircraft, DTD and EuroSAT, as in its paper);
#          LinearProbeCLIP to vit_b16; the other trainers to their base-to-new config.
# KEY VALUE  config overrides passed to train.py after its flags (e.g. OPTIM.MAX_EPOCH 10)
# Every script takes DATASET, SHOTS or SEED, TRAINER, CFG in this order (TRAINER before CFG; the old
# order "DATASET SHOTS CFG TRAINER" is refused with this usage). --dry-run may also come last.
# Environment: DATA (or --data DIR), OUTPUT (default output), SEEDS, PYTHON, DRY_RUN=1 (or --dry-run),
#   and for CoOp, ProGrad and their PLPP versions: NCTX (16), CSC (False), CTP (end) ->
#   TRAINER.COOP.N_CTX/CSC/CLASS_TOKEN_POSITION (those options given as KEY VALUE pairs count as well).
# Output: $OUTPUT/<DATASET>/<TRAINER>/<CFG>_<SHOTS>shots/nctx<N>_csc<CSC>_ctp<CTP>/seed<S> (other
#   trainers: without the nctx level), named after the run's effective prompt layout. A seed finished
#   with the same config (backbone included) is skipped, an unfinished one resumes, and a folder that
#   holds a run made with another config stops the script with the keys that differ.
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS)
plpp_parse "main.sh [--data DIR] [--dry-run] DATASET SHOTS [TRAINER] [CFG] [KEY VALUE ...]" 2 2 "$@"
DATASET=${ARGS[0]}
SHOTS=${ARGS[1]}
plpp_require_int SHOTS "$SHOTS"
((SHOTS >= 1)) || plpp_usage_error "SHOTS must be at least 1"
plpp_require_data
DATASET_CONFIG=$(plpp_dataset_config "$DATASET")
plpp_resolve "${ARGS[2]:-PLPP}" "${ARGS[3]}" fewshot "$DATASET" "$SHOTS"
plpp_no_zeroshot "$TRAINER"
plpp_seeds

RUN_ROOT="$OUTPUT/$DATASET/$TRAINER/${CFG}_${SHOTS}shots"
plpp_fewshot_opts "$TRAINER" "$CFG" "$DATASET"
EXTRA=(DATASET.NUM_SHOTS "$SHOTS" "${PLPP_FEWSHOT_OPTS[@]}")
if plpp_is_coop_family "$TRAINER"; then
  plpp_coop_layout
  RUN_ROOT+="/$PLPP_COOP_VARIANT"
  EXTRA+=("${PLPP_COOP_OPTS[@]}")
fi
for SEED in "${PLPP_SEEDS[@]}"; do
  DIR="$RUN_ROOT/seed$SEED"
  plpp_train_cmd "$TRAINER" "$DATASET_CONFIG" "$TRAINER_CONFIG" "$SEED" "$DIR"
  plpp_run "$DIR" train "${PLPP_CMD[@]}" "${EXTRA[@]}" "${OPTS[@]}"
done
