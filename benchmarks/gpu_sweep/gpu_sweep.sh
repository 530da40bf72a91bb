#!/usr/bin/env bash
# The comparison sweep on one H200, one prepared script: about 8 minutes of sweep, then the report
# (docs/reproducing.md, "On one GPU"). The data travels inside the checkout as one .tar.gz (about 17 MB):
#   here:   mkdir -p .data && echo /.data/ >> .git/info/exclude
#           tar czf .data/cifar10-full.tar.gz -C data cifar10-full     # after make data ARGS="out=data/cifar10-full val=200 format=jpeg"
#   there:  PYTHON=python3 PYTHONPATH=src bash benchmarks/gpu_sweep/gpu_sweep.sh      (with .data, and .whl for hydra)
# 1. unpacks the archive (tar xzf) into DATA_DIR, and the finished runs of an earlier run of the script
#    (RESULTS_DIR/reproduce-gpu-runs.tar.gz) into the sweep folder: they are kept, not trained again;
# 2. runs `launch/reproduce.py preset=gpu_sweep` for at most SWEEP_LIMIT_S seconds (a run cut off is trained
#    again from the start the next time: checkpoints do not travel back);
# 3. writes the report of every finished run, RESULTS_DIR/reproduce-gpu.{json,md,png}, packs the finished
#    runs' small files into RESULTS_DIR/reproduce-gpu-runs.tar.gz and copies all of it to $OUT when set.
# Run it again (the runs archive committed) to continue a sweep the limit stopped.
# Settings (environment): PYTHON, DATA_ARCHIVE, DATA_DIR, DEVICE (cuda; cpu for a dry run), SWEEP_LIMIT_S,
# SWEEP_DIR, RESULTS_DIR. Arguments are passed on to launch/reproduce.py (a dry run's tiny overrides).
set -uo pipefail
cd "$(dirname "$0")/../.."   # the repository root
PY=${PYTHON:-.venv/bin/python}
ARCHIVE=${DATA_ARCHIVE:-.data/cifar10-full.tar.gz}
DATA_DIR=${DATA_DIR:-/tmp/alexnet_mp-data}
DEVICE=${DEVICE:-cuda}
LIMIT=${SWEEP_LIMIT_S:-480}
SWEEP=${SWEEP_DIR:-outputs/reproduce-gpu}
RESULTS=${RESULTS_DIR:-outputs/gpu-sweep}   # RESULTS_DIR=results: update the committed report
RUNS="$RESULTS/reproduce-gpu-runs.tar.gz"
export PYTHONUNBUFFERED=1
say() { echo "gpu_sweep: $*"; }

# hydra-core, omegaconf and antlr4 travel as wheels (docs/gpu.md); install them when they are missing
if [ -d .whl ] && ! "$PY" -c "import hydra" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

name=$(basename "$ARCHIVE" .tar.gz)
if [ ! -d "$DATA_DIR/$name" ]; then
    [ -f "$ARCHIVE" ] || { echo "alexnet_mp: error: no data archive $ARCHIVE (make it with tar czf, above)" >&2; exit 1; }
    rm -rf "$DATA_DIR.part" && mkdir -p "$DATA_DIR.part" && tar xzf "$ARCHIVE" -C "$DATA_DIR.part" || exit 1
    [ -d "$DATA_DIR.part/$name" ] || { echo "alexnet_mp: error: $ARCHIVE holds no folder $name/" >&2; exit 1; }
    mkdir -p "$DATA_DIR" && mv "$DATA_DIR.part/$name" "$DATA_DIR/" && rm -rf "$DATA_DIR.part"
    say "unpacked $ARCHIVE into $DATA_DIR/$name ($(find "$DATA_DIR/$name" -type f | wc -l) files)"
fi
mkdir -p "$SWEEP" "$RESULTS"
if [ -f "$RUNS" ]; then
    tar xzf "$RUNS" -C "$SWEEP" --skip-old-files && say "kept the finished runs of $RUNS"
fi

args=(preset=gpu_sweep "data.root=$DATA_DIR/$name" "device=$DEVICE" "sweep_dir=$SWEEP" "output_dir=$RESULTS" "$@")
start=$(date +%s)
# timeout signals the whole process group: the runs in flight stop (loader workers included, so a run may stop
# without saving; on this machine it resumes from its last checkpoint, on a fresh one it starts again)
timeout --kill-after=60 "$LIMIT" "$PY" launch/reproduce.py "${args[@]}"
status=$?
{ [ "$status" = 124 ] || [ "$status" = 137 ]; } && say "stopped at the time limit (${LIMIT} s): run this script again to continue"
say "sweep: $(( $(date +%s) - start )) s, exit status $status"

# cut off by the limit: the report of every finished run (the sweep rewrote it after each, but a kill may
# have caught it mid-way); otherwise the sweep wrote it last, or stopped on bad input before any work
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    "$PY" launch/reproduce.py "${args[@]}" report_only=true > "$SWEEP/report.log" 2>&1 \
        || { cat "$SWEEP/report.log" >&2; exit 1; }
    grep "already finished" "$SWEEP/report.log"
fi
[ -f "$RESULTS/reproduce-gpu.json" ] || exit "$status"
(cd "$SWEEP" && find runs -maxdepth 2 -name result.json | sed 's|/result.json$||' | while read -r run; do
    for f in result.json summary.json eval.json metrics.jsonl config.yaml; do
        [ -f "$run/$f" ] && echo "$run/$f"
    done
done; [ -d logs ] && echo logs) > "$SWEEP/finished.txt"
tar czf "$RUNS.part" -C "$SWEEP" -T "$SWEEP/finished.txt" && mv "$RUNS.part" "$RUNS"
if [ -n "${OUT:-}" ]; then
    cp "$RESULTS"/reproduce-gpu.{json,md,png} "$RUNS" "$OUT/"
fi
say "wrote $RESULTS/reproduce-gpu.{json,md,png} and $RUNS"
[ "$status" = 0 ] || [ "$status" = 124 ] || [ "$status" = 137 ]
