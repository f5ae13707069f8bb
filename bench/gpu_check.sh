#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU"): one command, < 8 minutes on one GPU, no network.
#
#   bash bench/gpu_check.sh                 # on the GPU machine; needs bench/wheelhouse (bash bench/gpu_wheels.sh)
#   bash bench/gpu_check.sh --cpu-dry-run   # here: the same steps at tiny sizes on the CPU
#
# Steps: install the project offline (wheels from bench/wheelhouse not already there at that version,
# into a --target folder: nothing of the machine's Python changes) -> pytest -m cuda tests/cuda ->
# bert-base seq 128, bf16 ZeRO-2 through pretrain-launch (1 rank): kill -9 once a checkpoint is
# published, relaunch (must say "resumed from step"), finish, export, fill-mask -> bert-base seq 512
# (speed) -> transformers' BertForPreTraining / ModernBertForMaskedLM and our bert-base /
# modernbert-base at seq 128 and 512 in one process (bench/step_compare.py) -> the attention paths
# (padded, masked SDPA, PyTorch varlen) of both models at seq 512 (bench/attention.py) -> results.
# The whole check has a budget (BUDGET_S: 450 s on a GPU, 170 s dry): a step gets what is left of
# it at most, and one that cannot start in time is a failed step, named in the log.
# Results go to $OUT (default ./gpu_check_out): gpu_check.md (table), gpu_check.json (all numbers),
# gpu_check.log (every command's output), steps.tsv (step, rc, seconds). A failing step is
# recorded and the script goes on; the exit code is the number of failed steps (98: GPU mode
# without CUDA; 99: no install). In GPU mode the CUDA tests must all run and pass.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MODE=gpu
[ "${1:-}" = "--cpu-dry-run" ] && MODE=cpu
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT   # corpus, shards, runs: KEEP_WORK=1 keeps them
LOG=$OUT/gpu_check.log
: > "$LOG"
printf 'step\trc\tseconds\n' > "$OUT/steps.tsv"
FAILED=0
T0=$(date +%s)

if [ "$MODE" = gpu ]; then
    PY=${PYTHON:-python3}
    SITE=$WORK/site
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    unset DS_ACCELERATOR                  # DeepSpeed finds CUDA by itself
    MODEL=bert-base MODERN=modernbert-base SEQ_A=128 SEQ_B=512 MICRO_A=128 MICRO_B=32 STEPS=120 CKPT=40
    LOG_EVERY=10 VOCAB=30522 BENCH_STEPS=10 WORKERS=6 LIMIT=240 FILL_DEVICE=0 BUDGET_S=${BUDGET_S:-450}
    ATTENTION="--device cuda --dtype bf16 --models bert-base,modernbert-base --seq 512 --rows 32 --steps 6"
else
    PY=${PYTHON:-$REPO/.venv/bin/python}
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
    MODEL=bert-tiny MODERN=modernbert-tiny SEQ_A=32 SEQ_B=64 MICRO_A=8 MICRO_B=4 STEPS=12 CKPT=4 LOG_EVERY=2
    VOCAB=2000 BENCH_STEPS=2 WORKERS=1 LIMIT=120 FILL_DEVICE=cpu BUDGET_S=${BUDGET_S:-170}
    ATTENTION="--device cpu --models bert-tiny,modernbert-tiny --seq 32 --rows 8 --steps 2"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled HF_HUB_OFFLINE=1

log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

step() {  # step NAME TIMEOUT_S CMD...: run (functions too), log, record; on timeout kill the whole tree
    local name=$1 limit=$2; shift 2
    local t rc pid left
    t=$(date +%s)
    left=$(( BUDGET_S - (t - T0) ))
    if [ "$name" != results ]; then      # the results are always written
        if [ "$left" -lt 5 ]; then
            log "!! $name not run: the check's ${BUDGET_S}s budget is spent"
            printf '%s\t%s\t%s\n' "$name" "budget" 0 >> "$OUT/steps.tsv"
            FAILED=$((FAILED + 1))
            return 1
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    log "== $name (deadline ${limit}s): $*"
    ( "$@" ) >> "$LOG" 2>&1 &
    pid=$!
    # The watchdog's own `sleep` dies with it (the TERM trap), so no sleep outlives the step.
    ( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
      sleep "$limit" & nap=$!; wait "$nap"
      echo "!! $name: over ${limit}s, killed" >> "$LOG"; "$PY" bench/proc_tree.py kill "$pid" ) &
    local watchdog=$!
    wait "$pid"
    rc=$?
    kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" >> "$OUT/steps.tsv"
    if [ "$rc" -ne 0 ]; then FAILED=$((FAILED + 1)); log "!! $name failed (rc=$rc)"; fi
    return "$rc"
}

launch() {  # launch RUN DATA SEQ MICRO STEPS [overrides]: pretrain-launch, $MODEL bf16 ZeRO-2, 1 rank
    local name=$1 data=$2 seq=$3 micro=$4 steps=$5
    shift 5
    "$PY" -m launch.train run.name="$name" run.root="$WORK/runs" data.path="$data" model=$MODEL \
        parallel=zero2 precision=bf16 cluster.nproc=1 data.max_seq_len="$seq" data.micro_batch_size="$micro" \
        data.num_workers=$WORKERS trainer.max_steps="$steps" trainer.log_every=$LOG_EVERY trainer.eval_every=0 \
        trainer.progress=false tracker=default optim.lr=1e-4 schedule.warmup_steps=10 "$@"
}

install_offline() {
    local wheels=$REPO/bench/wheelhouse missing=() whl dist version
    [ -d "$wheels" ] || { echo "no $wheels: run bash bench/gpu_wheels.sh where PyPI is reachable"; return 1; }
    mkdir -p "$SITE"
    for whl in "$wheels"/*.whl; do
        dist=$(basename "$whl" | cut -d- -f1)
        case "$dist" in setuptools|wheel) continue ;; esac   # build-time only (pip's isolated build env)
        version=$(basename "$whl" | cut -d- -f2)
        if [ "$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist" 2>/dev/null)" = "$version" ]; then
            echo "present here: $dist $version"
        else
            missing+=("$whl")
        fi
    done
    echo "installing ${#missing[@]} wheels into $SITE"
    if [ ${#missing[@]} -gt 0 ]; then
        "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${missing[@]}" || return 1
    fi
    # The project, non-editable, built from this tree (setuptools and wheel from the wheelhouse).
    "$PY" -m pip install -q --no-index --no-deps --find-links "$wheels" --target "$SITE" "$REPO" || return 1
    (cd "$WORK" && "$PY" -c "import launch, deepspeed, webdataset, hydra, braceexpand, zstandard; print('installed:', launch.__file__)")
}

check_wheelhouse() {  # dry run: every wheel the GPU machine needs is there, for cp312 manylinux x86_64
    local wheels=$REPO/bench/wheelhouse
    # Not built here (a clean clone, CI): nothing to check; the GPU run itself stops without it (99).
    [ -d "$wheels" ] || { echo "no $wheels: not checked (make gpu-wheels builds it; the GPU run needs it)"; return 0; }
    "$PY" -m pip download -q --no-index --find-links "$wheels" --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$WORK/wheel-check" deepspeed webdataset braceexpand hydra-core \
        omegaconf antlr4-python3-runtime zstandard hjson py-cpuinfo msgpack ninja einops pydantic pydantic-core \
        annotated-types typing-inspection setuptools wheel || return 1
    echo "wheelhouse complete for cp312 manylinux x86_64: $(du -sm "$wheels" | cut -f1) MB"
}

device_report() {
    "$PY" - <<'EOF'
from parallel.device import compute_device, describe, matmul_peak
from parallel.precision import resolve_precision
from pretrain.train.throughput import peak_flops_per_device
d = compute_device()
print("device:", describe(d))
print("precision=auto:", resolve_precision("auto", d).reason)
print("MFU peak (bf16):", peak_flops_per_device("bf16", None, d).line())
print("measured bf16 matmul:", matmul_peak("bf16", d).line())
EOF
}

killed_run() {  # the seq-A run, killed with SIGKILL (launcher, torchrun, ranks) after its first checkpoint
    launch kill128 "$WORK/shards" "$SEQ_A" "$MICRO_A" "$STEPS" trainer.checkpoint_every=$CKPT &
    local launcher=$!
    "$PY" bench/proc_tree.py kill-when-published "$launcher" "$WORK/runs/kill128/checkpoints/latest" "$CKPT" $LIMIT
    local rc=$?
    wait "$launcher" 2>/dev/null
    [ -f "$WORK/runs/kill128/checkpoints/latest" ] || { echo "no checkpoint published"; return 1; }
    return $rc
}

resumed_run() {  # relaunching the same run must resume from the checkpoint, finish, evaluate and export
    launch kill128 "$WORK/shards" "$SEQ_A" "$MICRO_A" "$STEPS" trainer.checkpoint_every=$CKPT \
        trainer.eval_every=$STEPS trainer.eval_batches=5 trainer.export_on_finish=true | tee "$WORK/resume.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    grep -q "resumed from step" "$WORK/resume.out" || { echo "the relaunch did not resume"; return 1; }
}

fill_mask() {
    "$PY" - "$WORK/runs/kill128/export" "$FILL_DEVICE" <<'EOF'
import sys
from transformers import pipeline
from transformers.utils import logging
logging.set_verbosity_error()
device = int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2]
fill = pipeline("fill-mask", model=sys.argv[1], device=device)
for text in ("Return a new [MASK] object.", "The [MASK] statement is used to leave a loop."):
    print(text, "->", ", ".join(f"{g['token_str']} ({g['score']:.2f})" for g in fill(text, top_k=5)))
EOF
}

cuda_present() {  # GPU mode without a working CUDA device is a failed check, not a CPU run
    "$PY" -c "import sys, torch; ok = torch.cuda.is_available() and torch.cuda.device_count() > 0; print('cuda', ok); sys.exit(0 if ok else 1)"
}

cuda_tests() {  # pytest -m cuda: on a GPU every collected test must pass (none skipped, at least one)
    local collected passed
    collected=$("$PY" -m pytest -q --collect-only -m cuda tests/cuda -p no:cacheprovider -o addopts= 2>/dev/null \
        | grep -c '::')
    "$PY" -m pytest -q -m cuda tests/cuda -p no:cacheprovider -o addopts= -rsP | tee "$WORK/pytest-cuda.out"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    [ "$MODE" = gpu ] || return 0                 # the dry run only checks that they collect and run
    passed=$(grep -Eo '[0-9]+ passed' "$WORK/pytest-cuda.out" | tail -1 | cut -d' ' -f1)
    [ "${collected:-0}" -gt 0 ] && [ "${passed:-0}" -eq "$collected" ] || {
        echo "expected all $collected CUDA tests to pass on the GPU, ${passed:-0} passed"; return 1; }
}

compare() {  # compare PRESET SEQ MICRO: transformers vs ours, plain torch, same process
    local vocab
    vocab=$("$PY" -c "import sys; from pretrain.shardformat import load_manifest; print(load_manifest(sys.argv[1]).vocab_size)" "$WORK/shards")
    "$PY" bench/step_compare.py --preset "$1" --seq "$2" --batch "$3" --vocab "$vocab" --steps $BENCH_STEPS \
        | tee "$WORK/compare-$1-$2.jsonl"
    [ "${PIPESTATUS[0]}" -eq 0 ]
}

# ---------------------------------------------------------------------------------------------
log "mode $MODE, python $PY, work $WORK, out $OUT"
step environment 60 bash -c "'$PY' -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available())'; command -v nvidia-smi >/dev/null && nvidia-smi -L || true"
if [ "$MODE" = gpu ]; then
    step cuda 60 cuda_present || { log "GPU mode without a CUDA device: nothing to check"; exit 98; }
    step install 240 install_offline || { log "cannot continue without the install"; exit 99; }
else
    step wheelhouse 120 check_wheelhouse
fi
step device 120 device_report
step pytest-cuda 300 cuda_tests
step corpus 120 "$PY" -m pretrain.prepare.demo_corpus "$WORK/raw"
step prepare 240 "$PY" -m launch.prepare "input=$WORK/raw/*" "output=$WORK/shards" tokenizer.vocab_size=$VOCAB \
    validation_fraction=0.02 progress=false
step long-docs 120 "$PY" bench/long_docs.py "$WORK/long" --join 24     # seq 512 needs long documents
step prepare-long 240 "$PY" -m launch.prepare "input=$WORK/long/*" "output=$WORK/shards-long" \
    "tokenizer.path=$WORK/shards/tokenizer.json" validation_fraction=0.02 progress=false
step "train-$SEQ_A-kill-9" $LIMIT killed_run
step "train-$SEQ_A-resume" $LIMIT resumed_run
step fill-mask 180 fill_mask
step "train-$SEQ_B" $LIMIT launch base512 "$WORK/shards-long" "$SEQ_B" "$MICRO_B" $(( STEPS / 2 )) \
    trainer.checkpoint_every=100000 trainer.export_on_finish=false
step "compare-$MODEL-$SEQ_A" 120 compare $MODEL "$SEQ_A" "$MICRO_A"
step "compare-$MODEL-$SEQ_B" 120 compare $MODEL "$SEQ_B" "$MICRO_B"
step "compare-$MODERN-$SEQ_A" 120 compare $MODERN "$SEQ_A" "$MICRO_A"
step "compare-$MODERN-$SEQ_B" 120 compare $MODERN "$SEQ_B" "$MICRO_B"
# shellcheck disable=SC2086  # ATTENTION is a list of options
step attention 150 "$PY" bench/attention.py $ATTENTION --json "$WORK/attention.json"
step results 120 "$PY" bench/gpu_results.py --work "$WORK" --out "$OUT" --mode $MODE \
    --run "kill128:$SEQ_A:$MICRO_A" --run "base512:$SEQ_B:$MICRO_B"
log "done in $(( $(date +%s) - T0 ))s, $FAILED failed step(s); results in $OUT"
cat "$OUT/gpu_check.md" 2>/dev/null
exit "$FAILED"
