# H100 session 8 (issue 5), resuming the shipped H100 store in place.
# cuBLAS on the 350 breadth training problems (BREADTH, default data/problems/gemm_breadth.csv),
# then a seeded sample of SAMPLE (default 6) Triton and as many split-K configs each; with the time left, the
# training split-K rows under 0.05 ms still timed by the first timer, then the CUDA-graph
# energy sample of gemm_whole_large. A rerun resumes (stored rows are skipped).
# LIMIT (default 560) caps the seconds a call spends. Carry .whl_gpu and
# data/runs/h100_dataset.duckdb. Only this call's rows come back, as $OUT/delta.duckdb; merge
# it here with
#   python scripts/build_dataset.py --merge-into data/runs/h100_dataset.duckdb --replace DELTA
set -o pipefail
. scripts/device_setup.sh || exit 1
BREADTH=${BREADTH:-data/problems/gemm_breadth.csv}
TRAIN="data/problems/gemm_whole.csv data/problems/gemm_whole_large.csv data/problems/gemm_sampled.csv data/problems/h100_fullspace_issue3.csv"
# Each run: "problem files|dataflows|extra flags", in order, while time is left.
RUNS=("$BREADTH|cublas|--all" "$BREADTH|triton,triton_splitk|--sample ${SAMPLE:-6} --seed 38")
for F in $TRAIN; do RUNS+=("$F|triton_splitk|--all --retime-below 0.05"); done
RUNS+=("data/problems/gemm_whole_large.csv|triton,triton_splitk|--sample 10 --seed 21 --energy-only")
. scripts/device_runs.sh 560
