#!/usr/bin/env bash
# nanoGPT (https://github.com/karpathy/nanoGPT, a minimal GPT trainer) on the same text, tokenizer, model
# size, recipe and wall-clock budget as an `l2fast lm train` run, for a side-by-side validation bits per
# byte and tokens/s. Both final models are scored on the whole validation text by l2fast's own scoring.
#
#   bash bench/nanogpt_side_by_side.sh NANOGPT_DIR L2FAST_RUN_DIR MINUTES WORK_DIR
#   e.g. git clone https://github.com/karpathy/nanoGPT ../nanoGPT && git -C ../nanoGPT checkout 93a43d9
#        bash bench/nanogpt_side_by_side.sh ../nanoGPT runs/lm-english same runs/nanogpt
#
# MINUTES: nanoGPT's wall-clock budget; `same` = the l2fast run's training time (its checkpoint's clock).
# Run it from the directory the l2fast run was started in (the run's data paths are relative to it), with
# l2fast's environment active (python with l2fast and numpy; nanoGPT needs nothing else on a CPU).
# Steps: the run's training and validation text, tokenized by the run's tokenizer, into nanoGPT's
# train.bin/val.bin; a nanoGPT config of the run's model and recipe; a 20-iteration probe that times
# nanoGPT's iterations; the run with max_iters (= lr_decay_iters) that fills MINUTES of wall clock and
# a checkpoint at its end; both models scored. Writes WORK_DIR/side_by_side.md.
set -euo pipefail
if [ $# -ne 4 ]; then
    echo "usage: bash bench/nanogpt_side_by_side.sh NANOGPT_DIR L2FAST_RUN_DIR MINUTES WORK_DIR" >&2
    exit 2
fi
nanogpt=$(realpath "$1"); run=$(realpath "$2"); minutes=$3; work=$4
python=${PYTHON:-python}
case $python in */*) python=$(realpath "$python") ;; esac  # nanoGPT runs from its own directory
helper="$(dirname "$(realpath "$0")")/nanogpt_side_by_side.py"
for file in train.py model.py configurator.py; do
    if [ ! -f "$nanogpt/$file" ]; then
        echo "error: $nanogpt/$file not found: give a clone of https://github.com/karpathy/nanoGPT" >&2
        exit 2
    fi
done
"$python" -c "import numpy" 2>/dev/null || { echo "error: nanoGPT needs numpy: pip install numpy" >&2; exit 2; }
mkdir -p "$work"; work=$(realpath "$work")
rm -rf "$work/out" "$work/probe"
nanogpt_train() {  # LOG ARGS...: nanoGPT's train.py, which reads configurator.py from the current directory
    local log=$1; shift
    if ! (cd "$nanogpt" && "$python" train.py "$work/config.py" "$@") > "$log" 2>&1; then
        echo "error: nanoGPT's train.py failed; the end of $log:" >&2
        tail -20 "$log" >&2
        exit 1
    fi
}
seconds_since() {  # seconds (to the millisecond) since a `date +%s%N` time
    local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
    printf "%d.%03d" $((ms / 1000)) $((ms % 1000))
}

"$python" "$helper" export "$run" "$work"

probe_iters=${PROBE_ITERS:-20}  # more give a steadier time per iteration on a busy machine
start=$(date +%s%N)
nanogpt_train "$work/probe.log" --out_dir="$work/probe" --max_iters="$probe_iters" --decay_lr=False \
    --eval_interval=$((probe_iters + 1))
probe_seconds=$(seconds_since "$start")
iters=$("$python" "$helper" plan "$work" "$probe_seconds" $probe_iters "$minutes")
echo "nanoGPT: $iters iterations for a budget of $minutes minutes (probe: $probe_iters iterations in ${probe_seconds}s)"

# eval_interval = max_iters: a loss estimate and a checkpoint after the last update.
start=$(date +%s%N)
nanogpt_train "$work/train.log" --max_iters="$iters" --lr_decay_iters="$iters" --eval_interval="$iters"
train_seconds=$(seconds_since "$start")
echo "nanoGPT: trained in ${train_seconds}s"

"$python" "$helper" score "$nanogpt" "$run" "$work" "$minutes" "$train_seconds"
