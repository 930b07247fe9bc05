#!/usr/bin/env bash
# The CPU demo: CoOp and PLPP trained and evaluated on Fashion-MNIST (16 shots, seed 1), then compared.
# Without CLIP weights it runs on the proxy world instead (docs/PROXY.md) and says so first.
#
#   bash scripts/plpp/demo.sh [KEY VALUE ...] [--dry-run]
#   BACKBONE=/path/to/ViT-B-32.pt bash scripts/plpp/demo.sh
#   python -m plpp.tools.random_clip --arch ViT-B/32 -o clip_random.pt
#   BACKBONE=clip_random.pt bash scripts/plpp/demo.sh     # offline pipeline check: its numbers are no result
#
# Steps: 1. check that the CLIP weights can be loaded (stops here, before any training, if not);
# 2. prepare Fashion-MNIST (PNGs and split, once); 3. train and evaluate CoOp, then PLPP, with
# configs/trainers/{CoOp,PLPP}/demo_cpu.yaml (ViT-B/32 in fp32, 5 epochs with 1 warm-up, evaluation on
# 1,000 test images) through main.sh; 4. print accuracy and macro-F1 of both and the difference.
# It installs nothing. A rerun with the same settings skips the finished runs and only prints the table;
# one with another BACKBONE or other options into the same OUTPUT stops and names the settings that differ
# (use another OUTPUT, or delete the old runs). Numbers from a random-weight file are labelled as such.
#
# Proxy-world fallback: when BACKBONE is not set and ViT-B/32 is neither in the cache nor downloadable,
# the demo says so in its first line and runs on the proxy world instead: 1. build the world once in
# $WORLD (a CLIP pretrained here on synthetic images, and its datasets); 2. (nothing to prepare);
# 3. CoOp and PLPP on ProxyWorld (16 shots, seed 1, configs/trainers/{CoOp,PLPP}/proxy.yaml);
# 4. the same table, titled as a synthetic proxy world: not a result on real data. An explicit
# BACKBONE never falls back: if it cannot be loaded the demo stops.
# Environment:
#   DATA      data root (default ./data). Fashion-MNIST comes from $DATA/fashion-mnist, else
#             /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist), else a download
#   OUTPUT    output root (default output/demo)
#   BACKBONE  CLIP model name or local .pt file (default ViT-B/32: ~/.cache/clip/ViT-B-32.pt, or the
#             folder $PLPP_CLIP_CACHE, else downloaded; else the proxy-world fallback)
#   WORLD     proxy-world folder of the fallback (default $DATA/proxy-world); QUICK=1: the quick world
#   PYTHON    interpreter (default python); NCTX, CSC, CTP as for main.sh
# KEY VALUE options go to both training runs (e.g. OPTIM.MAX_EPOCH 2).
set -euo pipefail
# shellcheck source=scripts/plpp/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PLPP_RESERVED_KEYS+=(DATASET.NUM_SHOTS MODEL.BACKBONE.NAME)
DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-output/demo}
plpp_parse "demo.sh [--data DIR] [--dry-run] [KEY VALUE ...]" 0 0 "$@"
PROXY=0
if [[ -z ${BACKBONE:-} ]]; then
  # No weights named: ViT-B/32 if it is cached or can be downloaded (a dry run looks in the cache only).
  CHECK=("${PLPP_TOOL_PY[@]}" -m plpp.tools.check_weights --setting BACKBONE)
  [[ $DRY_RUN == 1 ]] && CHECK+=(--offline)
  if "${CHECK[@]}" ViT-B/32 >/dev/null 2>&1; then
    BACKBONE=ViT-B/32
  else
    PROXY=1
  fi
fi
TRAINERS=(CoOp PLPP)
START=$SECONDS

if [[ $PROXY == 1 ]]; then
  WORLD=$(plpp_abspath "${WORLD:-$DATA/proxy-world}")
  LABEL="synthetic proxy world: not a result on real data"
  echo "PROXY WORLD DEMO: no CLIP weights (ViT-B/32 is not in ${PLPP_CLIP_CACHE:-$HOME/.cache/clip} and could not be downloaded), so CoOp and PLPP run on the proxy world, a small CLIP pretrained here on synthetic images (docs/PROXY.md). Every number below is from a $LABEL. Set BACKBONE=/path/to/ViT-B-32.pt to run on CLIP."
  BUILD_OPTS=()
  [[ ${QUICK:-0} == 1 ]] && BUILD_OPTS=(--quick)
  echo "== 1/4 the proxy world in $WORLD (built once)"
  plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.proxy_world --out "$WORLD" "${BUILD_OPTS[@]}" || exit 1
  echo "== 2/4 the ProxyWorld dataset is in $WORLD/data (written with the world)"
  export NCTX=${NCTX:-4} # the proxy configs' 4-word "a photo of a" context
  plpp_coop_layout
  RUNS=()
  for T in "${TRAINERS[@]}"; do
    echo "== 3/4 $T: train (16 shots, seed 1) and evaluate on the proxy world [$((SECONDS - START)) s]"
    DATA="$WORLD/data" SEEDS=1 bash "$PLPP_SCRIPTS/main.sh" proxy_world 16 "$T" proxy \
      MODEL.BACKBONE.NAME "$WORLD/proxy-clip.pt" "${OPTS[@]}"
    RUNS+=("$OUTPUT/proxy_world/$T/proxy_16shots/$PLPP_COOP_VARIANT/seed1")
  done
  echo "== 4/4 Comparison on the proxy world [$((SECONDS - START)) s]"
  plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.compare --names CoOp,PLPP \
    --title "CoOp vs PLPP on the proxy world — $LABEL" "${RUNS[@]}"
  echo "Runs: ${RUNS[*]}"
  exit 0
fi

if [[ $BACKBONE != /* && -f $PLPP_CALLER_PWD/$BACKBONE ]]; then
  BACKBONE=$(plpp_abspath "$BACKBONE") # a local file named relative to where the script was started
fi

echo "== 1/4 CLIP weights: $BACKBONE"
plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.check_weights --setting BACKBONE "$BACKBONE" || exit 1

echo "== 2/4 Fashion-MNIST under $DATA"
[[ $DRY_RUN == 1 ]] || mkdir -p "$DATA"
plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.prepare_fashion_mnist --root "$DATA" || exit 1

plpp_coop_layout # the variant folder main.sh names after NCTX/CSC/CTP and the options
RUNS=()
for T in "${TRAINERS[@]}"; do
  echo "== 3/4 $T: train (16 shots, seed 1) and evaluate [$((SECONDS - START)) s]"
  SEEDS=1 bash "$PLPP_SCRIPTS/main.sh" fashion_mnist 16 "$T" demo_cpu MODEL.BACKBONE.NAME "$BACKBONE" "${OPTS[@]}"
  RUNS+=("$OUTPUT/fashion_mnist/$T/demo_cpu_16shots/$PLPP_COOP_VARIANT/seed1")
done

echo "== 4/4 Comparison [$((SECONDS - START)) s]"
plpp_exec "${PLPP_TOOL_PY[@]}" -m plpp.tools.compare --names CoOp,PLPP "${RUNS[@]}"
echo "Runs: ${RUNS[*]}"
echo "Summary of the whole tree: python -m plpp.results fewshot $OUTPUT"
