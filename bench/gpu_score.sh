#!/usr/bin/env bash
# Scoring throughput on GPUs: margin (one pass) and BALD (K=20 MC-dropout samples).
#
#   bench/gpu_score.sh [DIR]            # DIR defaults to /tmp/alray-gpu-bench
#   ROWS=20000 bench/gpu_score.sh       # a quick smoke run (the default is 4,000,000)
#
# Generates (once) a ROWS-row pool at the study's dims (image 1024, text 300, 50 classes)
# under DIR, writes a random-weight study-sized checkpoint (speed does not depend on the
# weights), then runs `alray score` with one 1-GPU actor per visible GPU. Prints rows/s
# (wall time of the whole command: Ray start-up, reading, scoring, merging) and the peak
# GPU memory that nvidia-smi saw on the device (the actors' own torch counters are not
# reachable from here). Without a GPU it says so and scores with CPU actors instead.
# Run it on the GPU machine itself: it starts a fresh Ray there (RAY_ADDRESS=local: not
# one that `ray start` left running, nor a cluster), so the GPUs it counts, the actors
# and nvidia-smi all see the same machine. The default
# pool takes ~18 GiB of disk and a few minutes to generate; it is kept for the next run.
# Then the resident pool (bench/resident.py, RESIDENT=0 skips it): the actors hold the
# pool in GPU memory and score it step after step (rows/s of a step, memory per actor).
# Env: ROWS, ACTORS, CPUS_PER_ACTOR (CPU runs), BATCH, RESIDENT, RESIDENT_DTYPE, PYTHON,
# ALRAY.
set -euo pipefail
export RAY_ADDRESS=local

DIR=${1:-${ALRAY_GPU_BENCH_DIR:-/tmp/alray-gpu-bench}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "$0")/.."
ROWS=${ROWS:-4000000}
BATCH=${BATCH:-4096}
K=20
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
ALRAY=${ALRAY:-$(dirname "$PYTHON")/alray}
command -v "$ALRAY" >/dev/null || ALRAY=alray
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
export RAY_DATA_DISABLE_PROGRESS_BARS=1
# a stalled pipeline (e.g. actors holding every CPU) fails instead of hanging
export RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S=${RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S:-600}

POOL_DIR="$DIR/pool$ROWS"
CKPT="$DIR/random.ckpt"
LOG="$DIR/score.log"

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if (( GPUS > 0 )); then
    DEVICE=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')
    ACTORS=${ACTORS:-$GPUS}
    LAYOUT=(--actors "$ACTORS" --num-gpus-per-actor 1)
    WHAT="$ACTORS actor(s) x 1 GPU ($DEVICE)"
else
    ACTORS=${ACTORS:-2}
    CPUS_PER_ACTOR=${CPUS_PER_ACTOR:-0.5}
    LAYOUT=(--actors "$ACTORS" --num-cpus-per-actor "$CPUS_PER_ACTOR")
    WHAT="$ACTORS actor(s) x $CPUS_PER_ACTOR CPU"
    echo "no GPU: CPU run ($WHAT); rows/s below are CPU figures, not GPU ones"
fi
echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $(nproc) CPUs, pool $POOL_DIR"

if [[ ! -d "$POOL_DIR/pool" ]]; then
    rm -rf "$POOL_DIR"   # a half-written earlier attempt
    echo "generating $ROWS rows (once) ..."
    if ! "$ALRAY" generate "$POOL_DIR" --rows "$ROWS" --val-rows 0 --seed 0 \
            > "$DIR/generate.log" 2>&1; then
        tail -n 20 "$DIR/generate.log" >&2
        exit 1
    fi
fi

"$PYTHON" - "$CKPT" <<'EOF'
import sys
import torch
from alray.config import ModelConfig
from alray.model import FusionNet, save_checkpoint

with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    model = FusionNet(ModelConfig())  # study dims, 50 classes, three heads
save_checkpoint(sys.argv[1], model, model.config)
EOF

SAMPLES="$DIR/nvidia-smi.csv"
sampler() {  # peak memory.used per GPU while one command runs
    : > "$SAMPLES"
    if command -v nvidia-smi >/dev/null && (( GPUS > 0 )); then
        nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 250 \
            > "$SAMPLES" 2>/dev/null &
        SAMPLER_PID=$!
    else
        SAMPLER_PID=
    fi
}
peak() {
    if [[ -n "${SAMPLER_PID:-}" ]]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        awk -F', *' '$2 > m[$1] {m[$1] = $2} END {s = ""; for (g in m) s = s "GPU" g " " m[g] " MiB; "; print (s == "" ? "n/a" : s)}' "$SAMPLES"
    elif (( GPUS > 0 )); then
        echo "n/a (no nvidia-smi)"
    else
        echo "no GPU: CPU run"
    fi
}

echo
echo "| strategy | rows | layout | batch | seconds | rows/s | peak GPU memory used |"
echo "|---|---:|---|---:|---:|---:|---|"
for STRATEGY in margin bald; do
    sampler
    START=$(date +%s.%N)
    if ! "$ALRAY" score --pool "$POOL_DIR/pool" --checkpoint "$CKPT" --strategy "$STRATEGY" \
            --mc-samples "$K" --score-batch-size "$BATCH" "${LAYOUT[@]}" \
            --out "$DIR/query-$STRATEGY.parquet" --show 0 > "$LOG" 2>&1; then
        peak > /dev/null
        echo "alray score --strategy $STRATEGY failed; the end of $LOG:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
    SECONDS_TAKEN=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
    NAME=$STRATEGY; [[ $STRATEGY == bald ]] && NAME="bald, K=$K"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$NAME" "$ROWS" "$WHAT" "$BATCH" \
        "$SECONDS_TAKEN" "$(awk -v r="$ROWS" -v s="$SECONDS_TAKEN" 'BEGIN {printf "%.0f", r / s}')" \
        "$(peak)"
done

# The resident pool (bench/resident.py): the same actors read their part once (into GPU
# memory on a GPU) and score it step after step; rows/s of a step once the pool is held.
# RESIDENT=0 skips it; RESIDENT_DTYPE=float16 halves the memory.
if [[ "${RESIDENT:-1}" == 1 ]]; then
    if (( GPUS > 0 )); then
        RESIDENT_LAYOUT=(--actors "$ACTORS" --gpus 1 --cpus 1)
    else
        RESIDENT_LAYOUT=(--actors "$ACTORS" --cpus "$CPUS_PER_ACTOR")
    fi
    echo
    echo "resident pool, $WHAT, ${RESIDENT_DTYPE:-float32}:"
    if ! "$PYTHON" bench/resident.py --pool "$POOL_DIR/pool" --rows "$ROWS" --paths resident \
            --strategies margin,bald --k "$K" --steps 3 --batch "$BATCH" \
            --dtype "${RESIDENT_DTYPE:-float32}" "${RESIDENT_LAYOUT[@]}" > "$DIR/resident.log" 2>&1; then
        echo "bench/resident.py failed; the end of $DIR/resident.log:" >&2
        tail -n 30 "$DIR/resident.log" >&2
        exit 1
    fi
    grep -E "^(\||resident:|  actor|  node)" "$DIR/resident.log"
fi
