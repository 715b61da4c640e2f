#!/usr/bin/env bash
# The H200 runs behind the README's GPU numbers: the GPU test files, the index build side by
# side, and the benchmark at the reference shapes (DESIGN.md), at n = 131072 and at 4096-8192.
#
#   OUT=results_dir bash scripts/gpu_runs.sh [step ...]
#
# Steps: index_build bench bench_131k bench_small build_repeats tests (all, in that order, by
# default). build_repeats: ours alone at n = 32768 in four fresh processes, for the spread of
# the index build's time from one process to the next (committed, with the official bench of
# earlier code, under notebooks/results/build_repeats/COMMIT/).
# Results land in $OUT; each step's log, exit status and seconds in $OUT/logs.tar.gz. The
# device tool brings back 8 files and 10 minutes a call: there, run `index_build bench`
# (5 files), then `bench_131k bench_small` (7), then `tests`, then `build_repeats` (13 files:
# bring them back as one tar).
set -u
OUT=${OUT:-gpu_runs}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
BENCH=(python -m sparse_attn_edu.bench --device cuda --dtype bfloat16 --heads 16 --head-dim 64
       --global-tokens 128 --patterns longformer bigbird --backward --in-process --out "$OUT")

run() {  # run NAME LIMIT_SECONDS COMMAND...: the command's output goes to NAME.log
    local name=$1 limit=$2 start
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    echo "$name rc=$? $(($(date +%s) - start)) s" | tee -a "$LOGS/steps.txt"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(index_build bench bench_131k bench_small build_repeats tests)
for step in "${steps[@]}"; do
    case $step in
        index_build) run index_build 200 env PYTHONPATH=. python scripts/index_build_timing.py ;;
        bench) run bench 300 "${BENCH[@]}" --batch 2 --seq-lens 16384 32768 \
                   --methods triton sdpa_dense sdpa_mask flex --name bench_gpu ;;
        bench_131k) run bench_131k 120 "${BENCH[@]}" --batch 1 --seq-lens 131072 \
                        --methods triton --name bench_gpu_131k ;;
        bench_small) run bench_small 90 "${BENCH[@]}" --batch 2 --seq-lens 4096 8192 \
                         --methods triton --name bench_gpu_small ;;
        build_repeats) for i in 1 2 3 4; do
                           run "build_rep$i" 100 "${BENCH[@]}" --batch 2 --seq-lens 32768 \
                               --methods triton --name "build_rep$i"
                       done ;;
        tests) run tests 450 python -m pytest -q -p no:cacheprovider \
                   tests/test_triton_kernels.py tests/test_triton_layout.py ;;
        *) echo "unknown step: $step (steps: index_build bench bench_131k bench_small build_repeats tests)" >&2
           exit 2 ;;
    esac
done
tar czf "$OUT/logs.tar.gz" -C "$LOGS" .
