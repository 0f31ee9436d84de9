#!/usr/bin/env bash
# The base model's training campaign (issue 16): one resumable `callic train` run that every
# session resumes in the background at one thread, and stops cleanly (right after a checkpoint)
# before it ends. The run lives outside the repository, in $CALLIC_CAMPAIGN (default
# ~/callic-campaign/<run>); on a new machine the same command starts it again from --init (the
# model it started from), losing only the optimizer state and the steps since the last commit.
#
#   bash bench/campaign.sh start     # resume (or start) in the background, log in <run>.log
#   bash bench/campaign.sh status    # running or not, last validation rows
#   bash bench/campaign.sh stop      # wait for the next checkpoint, then stop the run
#
# The run's arguments are bench/campaign.args (one source of truth: bench/gpu_session.sh reads
# them too); a new run (new schedule, data or patch size) gets a new name there.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARGS_FILE=$REPO/bench/campaign.args
RUN=$(sed -n 's/^run: *//p' "$ARGS_FILE")
ROOT=${CALLIC_CAMPAIGN:-$HOME/callic-campaign}
OUT=$ROOT/$RUN
DATA=${CALLIC_DATA:-$HOME/.cache/callic/data}
read -r -a ARGS <<< "$(sed -n 's/^args: *//p' "$ARGS_FILE")"

# The venv's callic when the repository has one (the README's set-up), else the one on PATH.
CALLIC=$REPO/.venv/bin/callic
[ -x "$CALLIC" ] || CALLIC=$(command -v callic || echo callic)

running() { pgrep -f "callic train .* --out $OUT( |$)" || true; }

case ${1:-status} in
  start)
    if [ -n "$(running)" ]; then echo "campaign $RUN already running (pid $(running))"; exit 0; fi
    mkdir -p "$OUT"
    cd "$REPO"
    OMP_NUM_THREADS=1 nohup "$CALLIC" train "$DATA/train" --val "$DATA/val" --out "$OUT" "${ARGS[@]}" --threads 1 \
      >> "$OUT.log" 2>&1 &
    echo "campaign $RUN started (pid $!), log $OUT.log"
    ;;
  stop)
    pid=$(running)
    if [ -z "$pid" ]; then echo "campaign $RUN is not running"; exit 0; fi
    before=$(stat -c %Y "$OUT/checkpoint.pt" 2>/dev/null || echo 0)
    echo "waiting for the next checkpoint of $RUN (every 5 minutes)..."
    while [ "$(stat -c %Y "$OUT/checkpoint.pt" 2>/dev/null || echo 0)" = "$before" ]; do sleep 5; done
    kill $pid
    echo "stopped $RUN after the checkpoint of $(date -r "$OUT/checkpoint.pt" -u +%H:%M:%S)"
    ;;
  status)
    pid=$(running)
    if [ -n "$pid" ]; then state="running (pid $pid)"; else state="not running"; fi
    echo "campaign $RUN: $state; folder $OUT"
    [ -f "$OUT/log.csv" ] && tail -n 5 "$OUT/log.csv"
    ;;
  *) echo "usage: bench/campaign.sh start|status|stop" >&2; exit 64 ;;
esac
