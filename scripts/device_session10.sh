# H100 session 10 (issue 5), resuming the shipped H100 store in place.
# STAGE=methods (default): benchmarks/energy_methods.py (the same configs by the Python loop and
#   by the CUDA-graph replay; $OUT/energy_methods.json), then STAGE=requeue with the time left.
# STAGE=requeue: energy per call, with the current CUDA-graph loop over 1 s, of every stored
#   row whose energy came from the Python loop ("busy-queue"; gemm_sampled.csv and gemm_h200.csv
#   hold them all); timings are kept.
# STAGE=whole: the rest of data/problems/gemm_whole_regimes.csv over the whole space.
# A rerun resumes (re-measured rows are busy-graph and skipped). LIMIT (default 560) caps the
# seconds a call spends. Carry .whl_gpu and data/runs/h100_dataset.duckdb. Only this call's
# rows come back, as $OUT/delta.duckdb; merge it here with
#   python scripts/build_dataset.py --merge-into data/runs/h100_dataset.duckdb --replace DELTA
set -o pipefail
. scripts/device_setup.sh || exit 1
STAGE=${STAGE:-methods}
if [ "$STAGE" = methods ]; then
  python3 benchmarks/energy_methods.py --results $OUT/energy_methods.json 2>&1 | tail -40
fi
if [ "$STAGE" = whole ]; then
  RUNS=("data/problems/gemm_whole_regimes.csv|cublas,triton,triton_splitk|--all")
else
  RUNS=()
  for F in data/problems/gemm_sampled.csv data/problems/gemm_h200.csv; do
    RUNS+=("$F|cublas,triton,triton_splitk|--all --energy-only --retime-below 100000")
  done
fi
. scripts/device_runs.sh 560
