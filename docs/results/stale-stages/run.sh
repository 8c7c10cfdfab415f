#!/bin/bash
# Run from a frozen copy: mkdir -p /tmp/democheck/code && git archive HEAD | tar -x -C /tmp/democheck/code; then taskset -c 0 docs/results/stale-stages/run.sh
# issue 32's check, scaled to a 2-core session: a budgeted run, the same budget again (nothing to do), a larger budget (trains on)
cd /tmp/democheck/code
export PYTHONPATH=/tmp/democheck/code OMP_NUM_THREADS=1
O="--out /work/runs/democheck/run --eval.rows [pi,pi_ft] --eval.windows [2048] --eval.passkey_lengths [2048] --eval.ppl.stride [1024] --eval.ppl.max_tokens 4096 --train.seq_len 1024"
for b in 6m 6m 10m; do
  echo "=== budget $b $(date +%T)"
  /usr/bin/time -f "wall %e s" /work/main/.venv/bin/python -m posinterp run recipes/smollm2-16k-cpu.yaml --estimate --budget $b $O 2>&1 | grep -v "it/s\]\|step/s\]" 
  echo "=== exit ${PIPESTATUS[0]} $(date +%T)"
done
