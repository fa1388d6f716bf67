# H100 session 3, call 1 (issues 3 and 4): GPU tests, collect_throughput on identical configs,
# three independent repeats of the same configs with energy (noise of runtime and energy per
# call), then new energy rows (timing + busy-queue energy) over the sampled problems, resumable.
# Carry .whl_gpu and data/runs. Copy the returned folder at once.
set -o pipefail
. scripts/device_setup.sh || exit 1
echo "== gpu tests"; timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -6 | tee $OUT/gpu_tests.log
echo "== throughput"; timeout 280 python3 benchmarks/collect_throughput.py --results $OUT/collect_throughput.json 2>&1 | tail -12
echo "== energy repeats"
for r in 1 2 3; do
  timeout -s TERM 70 python3 -m perftune collect --problems-file data/problems/h100_fullspace_issue3.csv \
    --sample 5 --seed 11 --energy --energy-window 0.5 --db $OUT/energy_repeat_$r.duckdb --no-progress 2>&1 \
    | grep -E "^(device|statuses|perftune)"
done
cp data/runs/h100_dataset.duckdb $OUT/h100_dataset.duckdb
echo "== new energy rows ($((575 - SECONDS)) s)"
timeout -s TERM $((575 - SECONDS)) python3 -m perftune collect --problems-file data/problems/gemm_sampled.csv \
  --dataflows triton,triton_splitk --sample 8 --seed 7 --energy --energy-window 0.5 \
  --db $OUT/h100_dataset.duckdb --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $OUT/h100_dataset.duckdb
