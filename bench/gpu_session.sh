#!/usr/bin/env bash
# One device call, prepared: install, check GPU-encode -> CPU-decode exactness, time the codec and
# batched adaptation, then train for the time left; everything worth keeping lands in $OUT.
#
#   bench/gpu_session.sh --prepare [--codec cca --lmbda L] [--checkpoint RUN/checkpoint.pt] [--data DIR] [--val DIR] [--photos DIR] [--no-slim]
#   bench/gpu_session.sh --restore                              # after the device call: the index as it was
#   bench/gpu_session.sh [--codec callic|cca] [--lmbda L] [--budget-s 540] [-- EXTRA callic train ARGS]
#   bench/gpu_session.sh --dry-run [--codec cca] [--out DIR]      # every stage on the CPU, tiny model
#
# --prepare (here, with network): wheels of the packages the device image lacks (constriction,
# imagecodecs) for its Python 3.12, and the pack .gpu/ (training crops, validation images, photo
# crops for the check, the campaign checkpoint if given; bench/gpu_tools.py pack), then the bytes a
# device call would carry against its 64 MiB. Before packing it takes the model files the session
# does not read out of git's index (bench/device_tree.py slim: they stay on disk; --no-slim keeps
# them): the tracked tree alone is over 64 MiB. --restore puts them back; commit nothing before it.
# On the device (the default): stages install (and what the machine is), check (bench/gpu_check.py),
# train (callic train --device cuda for the minutes left), summary (bench/gpu_tools.py summary). A stage
# that fails is recorded and the next one still runs; the exit code is 1 if any stage failed.
# The session's whole output is tee'd into $OUT/session.log. See the README, "GPU session".
set -euo pipefail
export PYTHONUNBUFFERED=1

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
START=$(date +%s)

MODE=device CODEC=callic LMBDA=1 BUDGET= PACK=.gpu OUTDIR=${OUT:-} CHECK_MODEL= INIT= BATCH= CHECK_S=240
DATA=~/.cache/callic/data/train VAL=~/.cache/callic/data/val PHOTOS=~/.cache/callic/data/pkg13
CHECKPOINT= TRAIN_MIB=auto WHEELS=1 STAGES=install,check,train SLIM=1
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --prepare) MODE=prepare ;;
    --restore) MODE=restore ;;
    --no-slim) SLIM=0 ;;
    --dry-run) MODE=dry-run ;;
    --codec) CODEC=$2; shift ;;
    --lmbda) LMBDA=$2; shift ;;
    --budget-s) BUDGET=$2; shift ;;
    --check-s) CHECK_S=$2; shift ;;
    --pack) PACK=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    --model) CHECK_MODEL=$2; shift ;;
    --init) INIT=$2; shift ;;
    --batch) BATCH=$2; shift ;;
    --stages) STAGES=$2; shift ;;
    --data) DATA=$2; shift ;;
    --val) VAL=$2; shift ;;
    --photos) PHOTOS=$2; shift ;;
    --checkpoint) CHECKPOINT=$2; shift ;;
    --train-mib) TRAIN_MIB=$2; shift ;;
    --no-wheels) WHEELS=0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_session: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
case $CODEC in callic|cca) ;; *) echo "gpu_session: --codec must be callic or cca" >&2; exit 64 ;; esac

# ----------------------------------------------------------------------------------- prepare
if [ "$MODE" = restore ]; then
  exec "${PYTHON:-python3}" bench/device_tree.py restore
fi
if [ "$MODE" = prepare ]; then
  PY=${PYTHON:-python3}
  if [ "$SLIM" = 1 ]; then
    SLIM_ARGS=(--codec "$CODEC")
    [ "$CODEC" = cca ] && SLIM_ARGS+=(--lmbda "$LMBDA")
    "$PY" bench/device_tree.py slim "${SLIM_ARGS[@]}"
  fi
  grep -qx '/.gpu/' .gitignore 2>/dev/null || grep -qx '/.gpu/' .git/info/exclude 2>/dev/null \
    || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
  ARGS=(--data "$DATA" --val "$VAL" --photos "$PHOTOS" --train-mib "$TRAIN_MIB")
  if [ -n "$CHECKPOINT" ]; then ARGS+=(--checkpoint "$CHECKPOINT"); fi
  WHL=$(mktemp -d "${TMPDIR:-/tmp}/gpu-wheels.XXXXXX")
  if [ "$WHEELS" = 1 ]; then
    # The device's python3 is 3.12 and holds torch, numpy, pillow, safetensors, pyarrow, fsspec,
    # tqdm and matplotlib; these two it lacks. Same versions as this venv.
    read -r CONSTRICTION IMAGECODECS < <("$PY" -c \
      'from importlib.metadata import version as v; print(v("constriction"), v("imagecodecs"))')
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" \
      "constriction==$CONSTRICTION" "imagecodecs==$IMAGECODECS"
    ARGS+=(--wheels "$WHL")
  fi
  OMP_NUM_THREADS=1 "$PY" bench/gpu_tools.py pack "$PACK" "${ARGS[@]}" > /dev/null
  mv "$WHL" "$PACK/whl"
  cat "$PACK/pack.json"
  echo "travel (tracked + untracked-not-ignored files + carry):"
  "$PY" bench/gpu_tools.py travel "$PACK"
  exit $?
fi

# ----------------------------------------------------------------------------------- session
if [ "$MODE" = dry-run ]; then
  PY=${PYTHON:-python3}
  BUDGET=${BUDGET:-150}
  [ -n "$OUTDIR" ] || OUTDIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-session-out.XXXXXX")
  DEVICE=cpu THREADS=1 CPU_WORKERS=1 RESERVE=20
  STAGES=prepare,$STAGES
else
  PY=python3  # on the device: the image's python3, the one with CUDA torch
  BUDGET=${BUDGET:-540}
  [ -n "$OUTDIR" ] || { echo "gpu_session: no \$OUT (run it through the device tool, or pass --out DIR)" >&2; exit 64; }
  DEVICE=cuda THREADS=8 CPU_WORKERS=$(nproc) RESERVE=60
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-session.XXXXXX")
DEADLINE=$((START + BUDGET))
STAGEFILE=$WORK/stages.tsv
: > "$STAGEFILE"
exec > >(tee -a "$OUTDIR/session.log") 2>&1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
echo "gpu_session: $MODE, codec $CODEC, budget ${BUDGET}s, out $OUTDIR, $(date -u +%FT%TZ)"

left() { echo $((DEADLINE - $(date +%s))); }
wanted() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# stage NAME FUNCTION: run it in this shell (its exports stay), record exit code and seconds.
stage() {
  local name=$1 t0 rc
  t0=$(date +%s)
  NOTE=
  if ! wanted "$name"; then
    printf '%s\t0\t0\tskipped (--stages)\n' "$name" >> "$STAGEFILE"
    return 0
  fi
  echo "=== $name ($(left)s left)"
  set +e
  "$2"
  rc=$?
  set -e
  [ "$rc" = 0 ] || echo "=== $name FAILED (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $(($(date +%s) - t0)) "$NOTE" >> "$STAGEFILE"
}

prepare_dry_run() {
  # The dry run's own pack and tiny models, from the bundled samples (nothing downloaded).
  local args=(--data jobs/samples --val jobs/samples --photos jobs/samples --crop 64 --min-side 64 --train-mib 0.5
              --photo-crop 16 --photo-count 10)
  if [ -n "$CHECKPOINT" ]; then args+=(--checkpoint "$CHECKPOINT"); fi
  "$PY" bench/gpu_tools.py pack "$WORK/pack" "${args[@]}" --tiny-models "$WORK/models" > /dev/null
  local rc=$?
  PACK=$WORK/pack
  return $rc
}

install() {
  if [ "$MODE" = dry-run ]; then
    NOTE="dry run: the venv's packages"
  elif compgen -G "$PACK/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$PACK"/whl/*.whl || return $?
    export PYTHONPATH=$PYTHONPATH:/tmp/site
    NOTE="wheels: $(cd "$PACK/whl" && ls *.whl | tr '\n' ' ')"
  else
    NOTE="no wheels in $PACK/whl"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  # Every package the later stages import, and what this machine is (env.json, for the summary).
  "$PY" - "$WORK/env.json" "$DEVICE" <<'EOF'
import json, os, platform, sys
import constriction, fsspec, imagecodecs, matplotlib, numpy, PIL, safetensors, torch, tqdm  # noqa: F401
import codec.api, jobs.train  # noqa: F401
env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
       "cpus": os.cpu_count(), "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name()
json.dump(env, open(sys.argv[1], "w"))
print(env)
if sys.argv[2] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device is visible to torch")
EOF
}


check() {
  local limit model=$CHECK_MODEL
  limit=$(($(left) - 90))
  [ "$MODE" = dry-run ] && limit=$(left)
  [ "$limit" -gt "$CHECK_S" ] && limit=$CHECK_S
  if [ "$limit" -lt 30 ]; then NOTE="skipped: ${limit}s left for it"; return 0; fi
  if [ -z "$model" ] && [ "$MODE" = dry-run ]; then
    model=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
      "$WORK/models/models.json" "$CODEC")
  fi
  # cca checks the rate point of --lmbda, the one model file of its kind a slim tree holds.
  if [ -z "$model" ] && [ "$CODEC" = cca ] && [ "$MODE" != dry-run ]; then model=$(shipped_rate_point); fi
  local args=("$PACK/photos" --out "$OUTDIR/check.json" --codec "$CODEC" --device "$DEVICE" --threads "$THREADS"
              --cpu-workers "$CPU_WORKERS")
  # The dry run adapts for 2 steps instead of 10: the same code, a fifth of the CPU time.
  if [ "$MODE" = dry-run ]; then args+=(--steps 0,2 --adapt-steps 2); fi
  [ -n "$model" ] && args+=(--model "$model")
  NOTE="limit ${limit}s"
  # Past limit - 30 s it skips the timings it has not begun; at the limit it is stopped.
  timeout --kill-after=10 "$limit" "$PY" bench/gpu_check.py "${args[@]}" --max-seconds $((limit - 30))
}

# The shipped lossy rate point trained for --lmbda (a slim tree, bench/device_tree.py, holds only
# that one of codec/models/CCA's files).
shipped_rate_point() {
  "$PY" - "$LMBDA" <<'EOF'
import sys
from codec.cca.api import PACKAGE_MODELS, quality_levels
from codec.cca.weights import load_model_file
for name in quality_levels():
    path = PACKAGE_MODELS / name
    if path.is_file() and load_model_file(path).lmbda == float(sys.argv[1]):
        print(path)
        break
EOF
}

# The lossy rate point to start from: --init, else the pack's checkpoint.pt (a full or stripped
# cca checkpoint), else the shipped rate point trained for this lambda, else a fresh model.
cca_init() {
  if [ -n "$INIT" ]; then echo "$INIT"
  elif [ -f "$PACK/checkpoint.pt" ]; then echo "$PACK/checkpoint.pt"
  elif [ "$MODE" != dry-run ]; then shipped_rate_point
  fi
}

train() {
  local minutes args=() out=$OUTDIR/train
  if [ "$(left)" -lt $((RESERVE + 20)) ]; then NOTE="skipped: $(left)s left"; return 0; fi
  minutes=$("$PY" -c "print(round(max(0.1, ($(left) - $RESERVE) / 60), 2))")
  if [ "$CODEC" = callic ]; then
    if [ -f "$PACK/checkpoint.pt" ]; then
      # Resume the campaign: its checkpoint (and log) in the run folder, and an --init of the same
      # configuration, so that the model is built as the checkpoint expects.
      mkdir -p "$out"
      cp "$PACK/checkpoint.pt" "$out/"
      [ -f "$PACK/log.csv" ] && cp "$PACK/log.csv" "$out/"
      local made
      made=$("$PY" bench/gpu_tools.py init-model "$out/checkpoint.pt" "$WORK/init") || return $?
      read -r START_STEP made <<< "$made"
      args+=(--init "$made")
      NOTE="resumed from step $START_STEP"
    elif [ -n "$INIT" ]; then args+=(--init "$INIT"); NOTE="from $INIT"
    elif [ "$MODE" = dry-run ]; then args+=(--config tiny); NOTE="fresh tiny model"
    else args+=(--init "codec/models/$(cat codec/models/DEFAULT)"); NOTE="from the shipped model"
    fi
    # The campaign's run (bench/campaign.args: patch, schedule), so that a resumed run continues
    # its cosine; the --init above and the GPU's batch come after it, and so win.
    # (A dry run keeps its tiny model and schedule, below.)
    local campaign=()
    [ "$MODE" = dry-run ] || read -r -a campaign <<< "$(sed -n 's/^args: *//p' bench/campaign.args)"
    args=("${campaign[@]}" "${args[@]}" --batch "${BATCH:-32}")
  else
    out=$WORK/train  # a cca checkpoint (~85 MB) cannot come back: only what fits goes to $OUT
    local init
    init=$(cca_init)
    if [ "$MODE" = dry-run ] && [ -z "$init" ]; then args+=(--config tiny); NOTE="fresh tiny model"
    elif [ -n "$init" ]; then args+=(--init "$init"); NOTE="from $init"
    else args+=(--config small); NOTE="fresh small model"
    fi
    args+=(--lmbda "$LMBDA" --crop 256 --steps 100000 --lr 1e-4 --warmup 200 --val-every 500 --val-tiles 16
           --batch "${BATCH:-16}")
  fi
  if [ "$MODE" = dry-run ]; then
    # 12 steps more than the checkpoint (if any) holds, so that a resumed dry run trains too.
    args+=(--steps $((${START_STEP:-0} + 12)) --val-every 6 --val-tiles 8 --batch "${BATCH:-4}" --warmup 2)
    if [ "$CODEC" = cca ]; then args+=(--crop 64 --val-tiles 2 --batch 2 --steps 4 --val-every 2); fi
  fi
  NOTE="$NOTE; $minutes min"
  echo "callic train ${args[*]} ${EXTRA[*]}"
  local rc=0
  OMP_NUM_THREADS=$THREADS timeout --kill-after=15 $(($(left) - 15)) \
    "$PY" -m jobs.cli train "$PACK/train" --val "$PACK/val" --out "$out" --codec "$CODEC" --device "$DEVICE" \
    --threads "$THREADS" --minutes "$minutes" --checkpoint-minutes 1 "${args[@]}" "${EXTRA[@]}" || rc=$?
  if [ "$CODEC" = cca ]; then
    mkdir -p "$OUTDIR/train/model"
    cp "$out"/log.csv "$out"/curve.png "$OUTDIR/train/" 2>/dev/null || true
    cp "$out"/model/*.safetensors "$OUTDIR/train/model/" 2>/dev/null || true
    if [ -f "$out/checkpoint.pt" ]; then
      "$PY" bench/gpu_tools.py strip-checkpoint "$out/checkpoint.pt" "$OUTDIR/train/init-fp16.pt" \
        || { [ "$rc" != 0 ] || rc=1; }
    fi
  fi
  return "$rc"
}

START_STEP=
[ "$MODE" = dry-run ] && stage prepare prepare_dry_run
stage install install
stage check check
stage train train
echo "=== summary"
set +e
"$PY" bench/gpu_tools.py summary --out "$OUTDIR" --codec "$CODEC" --stages "$STAGEFILE" --check "$OUTDIR/check.json" \
  --env "$WORK/env.json" --train-log "$OUTDIR/train/log.csv" --start-step "$START_STEP" --pack-json "$PACK/pack.json" \
  $([ "$MODE" = dry-run ] && echo --dry-run)
rc=$?
set -e
grep -q '"exact": false' "$OUTDIR/check.json" 2>/dev/null && echo "!!! EXACTNESS FAILED: see check.json / summary.md"
rm -rf "$WORK"
echo "gpu_session: done in $(($(date +%s) - START))s, exit $rc, outputs in $OUTDIR"
exit "$rc"
