# shellcheck shell=bash disable=SC2034  # (globals set here are read by the sourcing scripts)
# Shared logic of the scripts in scripts/plpp/ (sourced by each of them, never run on its own):
# argument parsing, the data and output roots, default configs per trainer and protocol, CoOp's
# epoch rule, the "already finished" test, and printing then running one train.py command.
#
# Environment read by every script:
#   DATA     data root (or --data DIR anywhere on the command line); required except by demo.sh
#   OUTPUT   output root (default: output, under the repository root)
#   PYTHON   interpreter (default: python); may hold extra words, e.g. "python -X faulthandler"
#   DRY_RUN  1: print the commands without running them (same as --dry-run, which may come last)
# Relative DATA/OUTPUT paths are taken relative to the directory the script was started from.

shopt -s inherit_errexit

PLPP_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLPP_REPO="$(cd "$PLPP_SCRIPTS/../.." && pwd)"
PLPP_CALLER_PWD="$PWD"
cd "$PLPP_REPO" || exit 1

# Keys the scripts set themselves (through flags or their arguments); scripts may add to this list.
PLPP_RESERVED_KEYS=(SEED OUTPUT_DIR DATASET.ROOT TRAINER.NAME)
PLPP_USAGE=""
ARGS=()
OPTS=()

plpp_die() {
  echo "error: $*" >&2
  exit 1
}

plpp_usage_error() {
  echo "error: $*" >&2
  echo "usage: $PLPP_USAGE" >&2
  echo "       (run with --help for details)" >&2
  exit 2
}

plpp_help() {
  # The script's leading comment block (after the shebang) is its help text.
  echo "usage: $PLPP_USAGE"
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

# A path given relative to the caller's directory, as seen from the repository root (unchanged when
# the script was started from the repository root).
plpp_abspath() {
  local path=$1
  if [[ $path != /* && $PLPP_CALLER_PWD == "$PLPP_REPO" ]]; then
    printf '%s\n' "$path"
    return 0
  fi
  [[ $path == /* ]] || path="$PLPP_CALLER_PWD/${path#./}"
  if [[ -d $path ]]; then
    (cd "$path" && pwd)
  else
    printf '%s\n' "$path"
  fi
}

# Names of the existing files or folders among the arguments (a glob), without folder and .yaml.
plpp_names() {
  local f names=()
  for f in "$@"; do
    [[ -e $f ]] || continue
    f=${f%/}
    f=${f##*/}
    names+=("${f%.yaml}")
  done
  printf '%s\n' "${names[*]}"
}

# True when $1 looks like a config key of a trailing KEY VALUE pair (OPTIM.MAX_EPOCH, DETERMINISTIC).
plpp_is_key() {
  [[ $1 =~ ^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$ || $1 =~ ^(DETERMINISTIC|VERBOSE|USE_CUDA|RESUME|VERSION|SEED|OUTPUT_DIR)$ ]]
}

# plpp_parse "USAGE" N_REQUIRED N_OPTIONAL "$@"
# Options may come anywhere, a trailing --dry-run included: --data DIR, --dry-run, -h/--help (a "--"
# ends them: every later word is an argument). The other words keep their order: N_REQUIRED positional arguments, then up to N_OPTIONAL more (an empty string or
# "-" means "the default"; a word that looks like a config key ends them), then KEY VALUE pairs passed to
# train.py. Every script takes its positional arguments in one order: DATASET, then SHOTS or SEED, then
# TRAINER, then CFG (each script uses the ones it needs). Sets ARGS (always N_REQUIRED + N_OPTIONAL
# entries) and OPTS, and makes DATA/OUTPUT absolute and exported.
plpp_parse() {
  PLPP_USAGE=$1
  local nreq=$2 nopt=$3 i value
  local words=()
  shift 3
  while (($#)); do
    case $1 in
      -h | --help)
        plpp_help
        exit 0
        ;;
      --data)
        (($# >= 2)) || plpp_usage_error "--data needs a directory"
        DATA=$2
        shift
        ;;
      --data=*) DATA=${1#--data=} ;;
      --dry-run) DRY_RUN=1 ;;
      --)
        shift
        words+=("$@")
        break
        ;;
      --?* | -[A-Za-z]*) plpp_usage_error "unknown option '$1'" ;;
      *) words+=("$1") ;;
    esac
    shift
  done
  set -- "${words[@]}"
  ARGS=()
  for ((i = 0; i < nreq; i++)); do
    if (($# == 0)) || plpp_is_key "$1"; then
      plpp_usage_error "missing argument $((i + 1)) of $nreq"
    fi
    ARGS+=("$1")
    shift
  done
  for ((i = 0; i < nopt; i++)); do
    value=""
    if (($#)) && ! plpp_is_key "$1"; then
      value=$1
      shift
    fi
    [[ $value == - ]] && value=""
    ARGS+=("$value")
  done
  OPTS=("$@")
  if ((${#OPTS[@]} % 2)); then
    plpp_usage_error "trailing options must be KEY VALUE pairs; got an odd number: ${OPTS[*]}"
  fi
  local key reserved
  for ((i = 0; i < ${#OPTS[@]}; i += 2)); do
    key=${OPTS[i]}
    plpp_is_key "$key" || plpp_usage_error "'$key' is not a config key; after the positional arguments only KEY VALUE pairs may follow (e.g. OPTIM.MAX_EPOCH 5)"
    for reserved in "${PLPP_RESERVED_KEYS[@]}"; do
      [[ $key == "$reserved" ]] && plpp_usage_error "$key is set by this script (from its arguments and environment); do not pass it as an option"
    done
  done
  if [[ -n ${DATA:-} ]]; then
    DATA=$(plpp_abspath "$DATA")
    export DATA
  fi
  if [[ -n ${OUTPUT:-} ]]; then
    OUTPUT=$(plpp_abspath "$OUTPUT")
  else
    OUTPUT=output
  fi
  DRY_RUN=${DRY_RUN:-0}
  PYTHON=${PYTHON:-python}
  export OUTPUT DRY_RUN PYTHON
  read -r -a PLPP_PY <<<"$PYTHON"
  # Helper tools run in one process even when PYTHON launches several (torchrun).
  if [[ ${PLPP_PY[0]##*/} == torchrun ]]; then PLPP_TOOL_PY=(python); else PLPP_TOOL_PY=("${PLPP_PY[@]}"); fi
}

# The value given to KEY among the trailing KEY VALUE options (the last one), or nothing.
plpp_opt_value() {
  local i value=""
  for ((i = 0; i < ${#OPTS[@]}; i += 2)); do
    [[ ${OPTS[i]} == "$1" ]] && value=${OPTS[i + 1]}
  done
  printf '%s\n' "$value"
}

# plpp_effective KEY ENV_NAME DEFAULT: the value a run gets for KEY: the KEY VALUE option when given,
# else the environment variable, else DEFAULT. Stops when both are given and disagree.
plpp_effective() {
  local key=$1 env_name=$2 default=$3 opt env_value
  opt=$(plpp_opt_value "$key")
  env_value=${!env_name:-}
  if [[ -n $opt && -n $env_value && $opt != "$env_value" ]]; then
    plpp_die "$env_name=$env_value and the option $key $opt disagree; give one of them"
  fi
  printf '%s\n' "${opt:-${env_value:-$default}}"
}

plpp_require_data() {
  [[ -n ${DATA:-} ]] || plpp_die "no data root: set DATA=/path/to/datasets (or pass --data DIR before the other arguments)"
  [[ -d $DATA || $DRY_RUN == 1 ]] || plpp_die "data root $DATA is not a directory (DATA / --data)"
}

plpp_require_int() { # NAME VALUE
  [[ $2 =~ ^[0-9]+$ ]] || plpp_usage_error "$1 must be a non-negative integer, got '$2'"
}

# configs/datasets/<DATASET>.yaml, or stop naming the ones that exist.
plpp_dataset_config() {
  local file="configs/datasets/$1.yaml"
  if [[ ! -f $file ]]; then
    local known
    known=$(plpp_names configs/datasets/*.yaml)
    plpp_die "dataset config $file not found. DATASET is the name of a file in configs/datasets/: $known"
  fi
  printf '%s\n' "$file"
}

# The folder under configs/trainers/ holding a trainer's configs (ZeroshotCLIP reads CoOp's).
plpp_config_dir() {
  case $1 in
    ZeroshotCLIP | ZeroshotCLIP2) printf '%s\n' configs/trainers/CoOp ;;
    *) printf '%s\n' "configs/trainers/$1" ;;
  esac
}

plpp_check_trainer() {
  local dir
  dir=$(plpp_config_dir "$1")
  if [[ ! -d $dir ]]; then
    if compgen -G "configs/trainers/*/$1.yaml" >/dev/null; then
      plpp_usage_error "'$1' is a config name, not a trainer: TRAINER comes before CFG"
    fi
    local known
    known=$(plpp_names configs/trainers/*/)
    plpp_die "unknown trainer '$1': no folder $dir. Trainers with configs: $known (and ZeroshotCLIP, which uses CoOp's)"
  fi
}

# configs/trainers/<TRAINER>/<CFG>.yaml, or stop naming the configs of that trainer.
plpp_trainer_config() {
  local dir file
  dir=$(plpp_config_dir "$1")
  file="$dir/$2.yaml"
  if [[ ! -f $file ]]; then
    if [[ -d configs/trainers/$2 ]] || plpp_is_zeroshot "$2"; then
      plpp_usage_error "'$2' is a trainer, not a config of $1: TRAINER comes before CFG"
    fi
    local known
    known=$(plpp_names "$dir"/*.yaml)
    plpp_die "trainer config $file not found. Configs of $1: $known"
  fi
  printf '%s\n' "$file"
}

# CoOp, ProGrad and their PLPP versions read TRAINER.COOP (N_CTX, CSC, CLASS_TOKEN_POSITION) and get the
# nctx<N>_csc<CSC>_ctp<CTP> folder; the other hosts have their own keys (KgCoOp's configs fix its context).
plpp_is_coop_family() {
  [[ $1 == CoOp || $1 == PLPP || $1 == ProGrad || $1 == PLPP_ProGrad ]]
}

plpp_is_zeroshot() {
  [[ $1 == ZeroshotCLIP || $1 == ZeroshotCLIP2 ]]
}

# CoOp's few-shot epoch rule: 1 shot -> 50 epochs, 2/4 -> 100, 8/16 -> 200; ImageNet always 50.
plpp_coop_fewshot_cfg() { # DATASET SHOTS
  if [[ $1 == imagenet ]] || (($2 <= 1)); then
    echo vit_b16_ep50
  elif (($2 <= 4)); then
    echo vit_b16_ep100
  else
    echo vit_b16
  fi
}

# plpp_default_cfg PROTOCOL TRAINER DATASET SHOTS, PROTOCOL one of fewshot, base2new, xd, zeroshot.
plpp_default_cfg() {
  local protocol=$1 trainer=$2 dataset=$3 shots=$4
  case $trainer in
    CoOp | PLPP)
      case $protocol in
        fewshot | xd) plpp_coop_fewshot_cfg "$dataset" "$shots" ;;
        base2new) [[ $dataset == imagenet ]] && echo vit_b16_ep50_ctxv1 || echo vit_b16_ctxv1 ;;
        *) echo vit_b16 ;;
      esac
      ;;
    ZeroshotCLIP | ZeroshotCLIP2) echo vit_b16 ;;
    CoCoOp | PLPP_CoCoOp) echo vit_b16_c4_ep10_batch1_ctxv1 ;;
    MaPLe | PLPP_MaPLe)
      [[ $protocol == xd ]] && echo vit_b16_c2_ep5_batch4_2ctx_cross_datasets || echo vit_b16_c2_ep5_batch4_2ctx
      ;;
    IVLP | PLPP_IVLP) echo "vit_b16_c2_ep20_batch4_4+4ctx" ;;
    PromptSRC | PLPP_PromptSRC)
      case $protocol in
        fewshot) echo "vit_b16_c2_ep50_batch4_4+4ctx_few_shot" ;;
        xd) echo "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets" ;;
        *) echo "vit_b16_c2_ep20_batch4_4+4ctx" ;;
      esac
      ;;
    KgCoOp | PLPP_KgCoOp) echo vit_b16_ep100_ctxv1 ;;
    ProGrad | PLPP_ProGrad) # CoOp's few-shot rule; base-to-new: ProGrad's ep100 recipe (ep50 on ImageNet)
      if [[ $protocol == base2new ]]; then
        [[ $dataset == imagenet ]] && echo vit_b16_ep50 || echo vit_b16_ep100
      else
        plpp_coop_fewshot_cfg "$dataset" "$shots"
      fi
      ;;
    LinearProbeCLIP) echo vit_b16 ;;
    *)
      local known
      known=$(plpp_names "$(plpp_config_dir "$trainer")"/*.yaml)
      plpp_die "no default config for trainer $trainer; pass CFG (one of: $known)"
      ;;
  esac
}

# The prompt layout a CoOp/PLPP run gets: TRAINER.COOP.N_CTX, CSC and CLASS_TOKEN_POSITION from the
# KEY VALUE options, else NCTX, CSC and CTP from the environment, else 16, False, end. Sets
# PLPP_COOP_OPTS (the options that fix it) and PLPP_COOP_VARIANT (its folder, nctx<N>_csc<CSC>_ctp<CTP>),
# so an override such as TRAINER.COOP.N_CTX 4 names its own folder.
plpp_coop_layout() {
  local n c p
  n=$(plpp_effective TRAINER.COOP.N_CTX NCTX 16)
  c=$(plpp_effective TRAINER.COOP.CSC CSC False)
  p=$(plpp_effective TRAINER.COOP.CLASS_TOKEN_POSITION CTP end)
  PLPP_COOP_OPTS=(TRAINER.COOP.N_CTX "$n" TRAINER.COOP.CSC "$c" TRAINER.COOP.CLASS_TOKEN_POSITION "$p")
  PLPP_COOP_VARIANT="nctx${n}_csc${c}_ctp${p}"
}

# plpp_finished DIR MODE: DIR holds a result: results.json, or a log (log.txt, or Dassl's
# log.txt-<time>) that says "Finish training" (MODE train) or holds a "=> result" block (MODE eval).
plpp_finished() {
  local dir=$1 mode=$2 pattern
  [[ -f $dir/results.json ]] && return 0
  if [[ $mode == train ]]; then pattern='Finish(ed)? training'; else pattern='^=> result'; fi
  grep -qsE -- "$pattern" "$dir"/log.txt*
}

# plpp_done DIR MODE COMMAND...: true when DIR is finished with the config COMMAND (a train.py command)
# asks for, backbone included (prints "skip: ..."); false when it has to run. Stops with the differing
# keys when DIR holds a finished run made with another config: nothing is skipped or overwritten then.
plpp_done() {
  local dir=$1 mode=$2 word rc=0 seen=0
  local args=()
  shift 2
  plpp_finished "$dir" "$mode" || return 1
  for word in "$@"; do
    if ((seen)); then args+=("$word"); elif [[ ${word##*/} == train.py ]]; then seen=1; fi
  done
  "${PLPP_TOOL_PY[@]}" -m plpp.tools.run_status "$dir" --mode "$mode" -- "${args[@]}" >/dev/null || rc=$?
  case $rc in
    0)
      echo "skip: $dir is finished with the same config; delete it to run again"
      return 0
      ;;
    3) return 1 ;;
    *) exit 1 ;; # run_status said why on stderr
  esac
}

plpp_quote() {
  local out="" word
  for word in "$@"; do
    if [[ -n $word && $word =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]]; then
      out+="$word "
    elif [[ $word != *\'* ]]; then
      out+="'$word' "
    else
      out+="$(printf '%q' "$word") "
    fi
  done
  printf '%s\n' "${out% }"
}

# plpp_run DIR MODE COMMAND...: skip a run finished with the same config, else print the command and
# run it (stops when DIR holds a finished run with another config, see plpp_done).
plpp_run() {
  local dir=$1 mode=$2
  shift 2
  plpp_done "$dir" "$mode" "$@" || plpp_exec "$@"
}

# Print a command, then run it (only print it when DRY_RUN is 1).
plpp_exec() {
  echo "+ $(plpp_quote "$@")"
  [[ $DRY_RUN == 1 ]] && return 0
  "$@"
}

# plpp_train_cmd TRAINER DATASET_CONFIG TRAINER_CONFIG SEED OUTPUT_DIR: sets PLPP_CMD to the train.py
# command without trailing options (append flags first, then KEY VALUE pairs).
plpp_train_cmd() {
  PLPP_CMD=("${PLPP_PY[@]}" train.py --root "$DATA" --seed "$4" --trainer "$1"
    --dataset-config-file "$2" --config-file "$3" --output-dir "$5")
}

# The epoch of the last checkpoint of a finished training run in DIR (for --load-epoch): from the
# pointer file <model>/checkpoint, else OPTIM.MAX_EPOCH of DIR/config.yaml. Stops when DIR holds no
# finished training run; HOW says which command makes one.
plpp_load_epoch() { # DIR HOW
  local dir=$1 how=$2 pointer name epoch=""
  if [[ $DRY_RUN == 1 && ! -d $dir ]]; then
    echo "note: $dir does not exist yet (dry run); --load-epoch shown as <EPOCH>" >&2
    echo "<EPOCH>"
    return 0
  fi
  [[ -d $dir ]] || plpp_die "no trained model: $dir does not exist. Train it first: $how"
  plpp_finished "$dir" train || plpp_die "the training run in $dir is not finished (no 'Finish training' in its log). Finish it first: $how"
  for pointer in "$dir"/*/checkpoint; do
    [[ -f $pointer ]] || continue
    read -r name <"$pointer" || true
    if [[ $name =~ ^model\.pth\.tar-([0-9]+)$ ]]; then
      epoch=${BASH_REMATCH[1]}
      break
    fi
  done
  if [[ -z $epoch && -f $dir/config.yaml ]]; then
    epoch=$(sed -n 's/^ *MAX_EPOCH: *\([0-9][0-9]*\).*/\1/p' "$dir/config.yaml" | head -n 1)
  fi
  [[ -n $epoch ]] || plpp_die "cannot tell the trained epoch of $dir: no <model>/checkpoint pointer and no OPTIM.MAX_EPOCH in its config.yaml"
  compgen -G "$dir/*/model.pth.tar-$epoch" >/dev/null ||
    plpp_die "no checkpoint model.pth.tar-$epoch in $dir/<model>/. Train it first: $how"
  echo "$epoch"
}

plpp_seeds() {
  read -r -a PLPP_SEEDS <<<"${SEEDS:-1 2 3}"
  ((${#PLPP_SEEDS[@]})) || plpp_die "SEEDS is empty"
  local s
  for s in "${PLPP_SEEDS[@]}"; do plpp_require_int "seed in SEEDS" "$s"; done
}

# plpp_resolve TRAINER CFG PROTOCOL DATASET SHOTS: check the trainer, fill in its default CFG for
# the protocol, and set TRAINER, CFG and TRAINER_CONFIG.
plpp_resolve() {
  TRAINER=$1
  CFG=$2
  plpp_check_trainer "$TRAINER"
  [[ -n $CFG ]] || CFG=$(plpp_default_cfg "$3" "$TRAINER" "$4" "$5")
  TRAINER_CONFIG=$(plpp_trainer_config "$TRAINER" "$CFG")
}

plpp_no_zeroshot() {
  if plpp_is_zeroshot "$1"; then
    plpp_die "$1 trains nothing; evaluate it with scripts/plpp/zeroshot.sh"
  fi
}

# Base-to-new and cross-dataset evaluate classes the training never saw: refuse trainers that cannot.
plpp_transfers() {
  plpp_no_zeroshot "$1"
  if [[ $1 == LinearProbeCLIP ]]; then
    plpp_die "LinearProbeCLIP learns one weight vector per training class, so it cannot evaluate other classes or datasets; run it with scripts/plpp/main.sh (few-shot)"
  fi
}

# PromptSRC's few-shot recipe: GPA_MEAN 45, GPA_STD 5 on these datasets (30/30 on the others, as its file says).
plpp_fewshot_opts() { # TRAINER CFG DATASET
  PLPP_FEWSHOT_OPTS=()
  if [[ $1 == *PromptSRC && $2 == "vit_b16_c2_ep50_batch4_4+4ctx_few_shot" ]]; then
    case $3 in
      stanford_cars | oxford_flowers | fgvc_aircraft | dtd | eurosat)
        PLPP_FEWSHOT_OPTS=(TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5)
        ;;
    esac
  fi
}

# Base-to-new (16 shots): from DATASET SEED [TRAINER] [CFG] (in ARGS) set DATASET, SEED, TRAINER,
# CFG, DATASET_CONFIG, TRAINER_CONFIG, B2N_TRAIN_DIR and B2N_TEST_DIR.
plpp_base2new_setup() {
  DATASET=${ARGS[0]}
  SEED=${ARGS[1]}
  plpp_require_int SEED "$SEED"
  plpp_require_data
  DATASET_CONFIG=$(plpp_dataset_config "$DATASET")
  plpp_resolve "${ARGS[2]:-PLPP}" "${ARGS[3]}" base2new "$DATASET" 16
  plpp_transfers "$TRAINER"
  B2N_TRAIN_DIR="$OUTPUT/base2new/train_base/$DATASET/shots_16/$TRAINER/$CFG/seed$SEED"
  B2N_TEST_DIR="$OUTPUT/base2new/test_new/$DATASET/shots_16/$TRAINER/$CFG/seed$SEED"
}

# Cross-dataset / domain generalisation: the ImageNet 16-shot model of TRAINER CFG SEED. Sets
# TRAINER, CFG, TRAINER_CONFIG and XD_MODEL_DIR.
plpp_xd_setup() { # TRAINER CFG SEED
  plpp_require_int SEED "$3"
  plpp_require_data
  plpp_resolve "${1:-PLPP}" "$2" xd imagenet 16
  plpp_transfers "$TRAINER"
  XD_MODEL_DIR="$OUTPUT/imagenet/$TRAINER/${CFG}_16shots/seed$3"
}
