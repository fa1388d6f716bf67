# H100 session 7 (issue 5), resuming the shipped H100 store in place.
# STAGE=narrow: the whole config space of the narrow training problems
# (data/problems/gemm_whole_narrow.csv: few output tiles, so per-CTA streaming sets the time),
# then, with the time left, CUDA-graph energy of a seeded sample of the whole-space training
# problems' configs and the training split-K rows under 0.05 ms still timed by the first timer.
# STAGE=energy: the GPU tests, then that energy and the split-K rows.
# LIMIT (default 545) caps the seconds a call spends. Carry .whl_gpu and
# data/runs/h100_dataset.duckdb. Only this call's rows come back, as $OUT/delta.duckdb; merge
# it here with
#   python scripts/build_dataset.py --merge-into data/runs/h100_dataset.duckdb --replace DELTA
set -o pipefail
. scripts/device_setup.sh || exit 1
NARROW=data/problems/gemm_whole_narrow.csv
WHOLE="data/problems/gemm_whole.csv data/problems/gemm_whole_large.csv"
TRAIN="data/problems/gemm_whole.csv data/problems/gemm_whole_large.csv data/problems/gemm_sampled.csv data/problems/h100_fullspace_issue3.csv"
# Each run: "problem files|dataflows|extra flags", in order, while time is left.
LATER=()  # the energy sample, then the split-K re-time
for F in $WHOLE; do LATER+=("$F|triton,triton_splitk|--sample 10 --seed 21 --energy-only"); done
for F in $TRAIN; do LATER+=("$F|triton_splitk|--all --retime-below 0.05"); done
case "${STAGE:-narrow}" in
  narrow) RUNS=("$NARROW|cublas,triton,triton_splitk|--all" "${LATER[@]}") ;;
  energy) echo "== gpu tests"
          timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -8 | tee $OUT/gpu_tests.log
          RUNS=("${LATER[@]}") ;;
esac
. scripts/device_runs.sh 545
