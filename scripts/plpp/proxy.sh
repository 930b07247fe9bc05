#!/usr/bin/env bash
# The proxy world end to end (docs/PROXY.md): build the world once, then zero-shot and base-to-new for
# every host and its PLPP version, the sweep of PLPP's open choices (selected on the few-shot
# validation split), few-shot, the tables, a plot and the Markdown report. Finished runs are skipped,
# so a rerun only redoes what is missing and prints the report again.
#
#   bash scripts/plpp/proxy.sh [--dry-run] [KEY VALUE ...]
#   QUICK=1 SEEDS=1 TRAINERS="CoOp PLPP" SHOTS=16 SWEEP=0 bash scripts/plpp/proxy.sh OPTIM.MAX_EPOCH 2
#
# Environment:
#   WORLD     folder of the proxy world (default data/proxy-world; built there on the first run)
#   DATASET   proxy_world_drawing (default: the drawings, where a prompt has most to learn) or
#             proxy_world (the photos: the hand-crafted prompt is already close to the best one)
#   QUICK     1: build and use the quick world (tests, CI) instead of the full one
#   OUTPUT    output root (default output/proxy)
#   SEEDS     seeds (default "1 2 3")
#   TRAINERS  hosts and PLPP versions (default: every registered host and its PLPP version: CoOp PLPP
#             CoCoOp PLPP_CoCoOp MaPLe PLPP_MaPLe IVLP PLPP_IVLP PromptSRC PLPP_PromptSRC KgCoOp
#             PLPP_KgCoOp ProGrad PLPP_ProGrad LinearProbeCLIP); ZeroshotCLIP is always evaluated;
#             LinearProbeCLIP runs few-shot only (it has no weights for classes it never saw)
#   SHOTS     few-shot K values (default "1 4 16"; empty: no few-shot runs)
#   SWEEP     1 (default): sweep TRAINER.PLPP's open choices (python -m plpp.tools.proxy_sweep); 0: skip
#   SWEEP_TRAINERS  the PLPP versions swept (default PLPP, on CoOp; any PLPP_<host> with a proxy.yaml)
#   PYTHON    interpreter (default python); DRY_RUN=1 (or --dry-run) prints the commands only
# KEY VALUE options go to every train.py run (e.g. OPTIM.MAX_EPOCH 2 for a smoke test).
# Output under $OUTPUT: base2new/ (plpp-results base2new), $DATASET/ (few-shot), sweep/sweep_<DATASET>_<TRAINER>.json,
# fewshot.png and report.md (python -m plpp.tools.proxy_report, the tables of docs/PROXY.md).
# Every number it prints is from a synthetic proxy world: not a result on real data.
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS DATASET.SUBSAMPLE_CLASSES MODEL.BACKBONE.NAME)
OUTPUT=${OUTPUT:-output/proxy}
plpp_parse "proxy.sh [--dry-run] [KEY VALUE ...]" 0 0 "$@"
WORLD=$(plpp_abspath "${WORLD:-data/proxy-world}")
DATA="$WORLD/data"
export DATA
WEIGHTS="$WORLD/proxy-clip.pt"
DATASET=${DATASET:-proxy_world_drawing}
[[ $DATASET == proxy_world || $DATASET == proxy_world_drawing ]] ||
  plpp_usage_error "DATASET must be proxy_world or proxy_world_drawing, got '$DATASET'"
PROXY_HOSTS="CoOp PLPP CoCoOp PLPP_CoCoOp MaPLe PLPP_MaPLe IVLP PLPP_IVLP PromptSRC PLPP_PromptSRC KgCoOp PLPP_KgCoOp"
PROXY_HOSTS+=" ProGrad PLPP_ProGrad LinearProbeCLIP"
read -r -a TRAINER_LIST <<<"${TRAINERS-$PROXY_HOSTS}"
read -r -a SWEEP_LIST <<<"${SWEEP_TRAINERS-PLPP}"
read -r -a SHOT_LIST <<<"${SHOTS-1 4 16}"
plpp_seeds
for T in "${TRAINER_LIST[@]}"; do
  plpp_check_trainer "$T"
  plpp_no_zeroshot "$T"
  plpp_trainer_config "$T" proxy >/dev/null
done
for T in "${SWEEP_LIST[@]}"; do
  [[ $T == PLPP || $T == PLPP_* ]] || plpp_usage_error "SWEEP_TRAINERS takes PLPP versions (PLPP, PLPP_<host>), got '$T'"
  plpp_check_trainer "$T"
  plpp_trainer_config "$T" proxy >/dev/null
done
for K in "${SHOT_LIST[@]}"; do plpp_require_int "K in SHOTS" "$K"; done
BUILD_OPTS=()
[[ ${QUICK:-0} == 1 ]] && BUILD_OPTS=(--quick)
START=$SECONDS
step() { echo "== $1 [$((SECONDS - START)) s]"; }

echo "Proxy world: a CLIP pretrained on synthetic images here. Synthetic proxy world: not a result on real data."
step "1/6 the proxy world in $WORLD"
plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.proxy_world --out "$WORLD" "${BUILD_OPTS[@]}"

step "2/6 zero-shot CLIP on the base and the new classes"
DATASET_CONFIG=$(plpp_dataset_config "$DATASET")
ZS_CONFIG=$(plpp_trainer_config ZeroshotCLIP proxy)
for SEED in "${PLPP_SEEDS[@]}"; do
  for PART in base new; do
    FOLDER=$([[ $PART == base ]] && echo train_base || echo test_new)
    DIR="$OUTPUT/base2new/$FOLDER/$DATASET/shots_16/ZeroshotCLIP/proxy/seed$SEED"
    plpp_train_cmd ZeroshotCLIP "$DATASET_CONFIG" "$ZS_CONFIG" "$SEED" "$DIR"
    plpp_run "$DIR" eval "${PLPP_CMD[@]}" --eval-only DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES "$PART" \
      MODEL.BACKBONE.NAME "$WEIGHTS" "${OPTS[@]}"
  done
done

for T in "${TRAINER_LIST[@]}"; do
  [[ $T == LinearProbeCLIP ]] && continue # few-shot only
  step "3/6 base-to-new: $T"
  bash "$PLPP_SCRIPTS/base2new.sh" "$DATASET" "$T" proxy MODEL.BACKBONE.NAME "$WEIGHTS" "${OPTS[@]}"
done

if [[ ${SWEEP:-1} == 1 ]]; then
  for T in "${SWEEP_LIST[@]}"; do
    step "4/6 PLPP's open choices ($T), selected on the few-shot validation split"
    plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.proxy_sweep --world "$WORLD" --output "$OUTPUT" --dataset "$DATASET" \
      --trainer "$T" --seeds "${PLPP_SEEDS[@]}" -- "${OPTS[@]}"
  done
else
  step "4/6 PLPP's open choices: skipped (SWEEP=0)"
fi

for K in "${SHOT_LIST[@]}"; do
  for T in "${TRAINER_LIST[@]}"; do
    step "5/6 few-shot: $T, $K shots"
    NCTX=4 bash "$PLPP_SCRIPTS/main.sh" "$DATASET" "$K" "$T" proxy MODEL.BACKBONE.NAME "$WEIGHTS" "${OPTS[@]}"
  done
done

step "6/6 tables, plot and report"
plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.results base2new "$OUTPUT" --seeds "${PLPP_SEEDS[@]}"
if ((${#SHOT_LIST[@]})); then
  plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.results fewshot "$OUTPUT" --seeds "${PLPP_SEEDS[@]}"
  plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.results plot fewshot "$OUTPUT" -o "$OUTPUT/fewshot.png"
fi
plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.proxy_report "$OUTPUT" --world "$WORLD" -o "$OUTPUT/report.md"
echo "Done in $((SECONDS - START)) s. Report: $OUTPUT/report.md (synthetic proxy world: not a result on real data)"
