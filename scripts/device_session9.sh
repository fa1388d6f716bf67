# H100 session 9 (issue 5), resuming the shipped H100 store in place.
# STAGE=whole (default): data/problems/gemm_whole_regimes.csv over the whole space (its cuBLAS
#   rows and sampled configs are stored already and skipped).
# STAGE=energy: CUDA-graph energy per call of the random-breadth problems (none had any): their
#   cuBLAS rows, then their first seeded-sample Triton and split-K configs; with time left, a
#   seeded sample of 6 configs of each whole-regime problem.
# A rerun resumes (stored rows are skipped). LIMIT (default 560) caps the seconds a call
# spends. Carry .whl_gpu and data/runs/h100_dataset.duckdb. Only this call's rows come back,
# as $OUT/delta.duckdb; merge it here with
#   python scripts/build_dataset.py --merge-into data/runs/h100_dataset.duckdb --replace DELTA
set -o pipefail
. scripts/device_setup.sh || exit 1
REGIMES=data/problems/gemm_whole_regimes.csv
RANDOM_BREADTH=data/problems/gemm_breadth_random.csv
if [ "${STAGE:-whole}" = energy ]; then
  RUNS=("$RANDOM_BREADTH|cublas|--all --energy-only"
        "$RANDOM_BREADTH|triton,triton_splitk|--sample 1 --seed 38 --energy-only"
        "$REGIMES|triton,triton_splitk|--sample 6 --seed 39 --energy-only")
else
  RUNS=("$REGIMES|cublas,triton,triton_splitk|--all")
fi
. scripts/device_runs.sh 560
