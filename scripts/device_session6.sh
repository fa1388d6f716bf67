# H100 session 6: time short kernels again with the held-stream timer (launch bubbles, see
# collectors/timers/cuda_events.py), resuming the shipped H100 store in place.
# STAGE=heldout (first call): GPU tests, benchmarks/timer_bubbles.py, then the held-out
# problems' split-K rows under 0.1 ms. STAGE=heldout2: the held-out rows under 0.1 ms whose
# energy came from the Python loop (CUDA-graph loop now), then the rest of the split-K rows.
# STAGE=energy: the same energy for the training problems. STAGE=train: the training problems'
# split-K rows under 0.05 ms. STAGE=rest: what energy and train left, in that order.
# Carry .whl_gpu and data/runs/h100_dataset.duckdb. Only this call's rows come back, as
# $OUT/delta.duckdb; merge it here with
#   python scripts/build_dataset.py --merge-into data/runs/h100_dataset.duckdb --replace DELTA
set -o pipefail
. scripts/device_setup.sh || exit 1
STORE=/tmp/h100_dataset.duckdb
cp data/runs/h100_dataset.duckdb $STORE
BEFORE=$(date -u +"%Y-%m-%d %H:%M:%S")
HELD=/tmp/heldout_gemm.csv  # heldout.csv lists other families too
{ echo "m,n,k,dtype"; awk -F, '$1 == "gemm" {print $2","$3","$4","$5}' data/problems/heldout.csv; } > $HELD
TRAIN="data/problems/gemm_whole.csv data/problems/gemm_whole_large.csv data/problems/gemm_sampled.csv data/problems/h100_fullspace_issue3.csv"
# Each stage: "problem files|dataflows|below ms|extra flags" runs, in order.
case "${STAGE:-heldout}" in
  heldout)
    echo "== gpu tests"
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -8 | tee $OUT/gpu_tests.log
    echo "== timer bubbles ($SECONDS s)"
    timeout 300 python3 benchmarks/timer_bubbles.py --results $OUT/timer_bubbles.json 2>&1 | tail -40
    RUNS=("$HELD|triton_splitk|0.1|") ;;
  heldout2) RUNS=("$HELD|cublas,triton,triton_splitk|0.1|--energy-only"
                  "$HELD|triton_splitk|0.1|") ;;
  energy) RUNS=(); for F in $TRAIN; do RUNS+=("$F|cublas,triton,triton_splitk|0.1|--energy-only"); done ;;
  train) RUNS=(); for F in $TRAIN; do RUNS+=("$F|triton_splitk|0.05|"); done ;;
  rest) RUNS=(); for F in $TRAIN; do RUNS+=("$F|cublas,triton,triton_splitk|0.1|--energy-only"); done
        for F in $TRAIN; do RUNS+=("$F|triton_splitk|0.05|"); done ;;
esac
for RUN in "${RUNS[@]}"; do
  IFS='|' read -r FILES DATAFLOWS BELOW EXTRA <<< "$RUN"
  LEFT=$((550 - SECONDS)); [ $LEFT -gt 20 ] || break
  echo "== retime $FILES $DATAFLOWS < $BELOW ms $EXTRA ($LEFT s left)"
  timeout -s TERM $LEFT python3 -m perftune collect --problems-file $FILES --all \
    --dataflows $DATAFLOWS --retime-below $BELOW $EXTRA --db $STORE --no-progress 2>&1 \
    | grep -E "^(device|statuses|perftune|Error|error)" | head -20
done
python3 scripts/build_dataset.py --export-delta "$BEFORE" $STORE $OUT/delta.duckdb
