# Next H100 session (issues 3 and 4): re-run the collector
# throughput on identical configs, re-measure (resumes) the shipped energy rows, and finish the
# whole-space problems. Carry .whl_gpu and data/runs (h100_dataset.duckdb, h100_fullspace.duckdb).
# Copy everything from the returned folder at once: the next call reuses its number.
set -o pipefail
. scripts/device_setup.sh || exit 1
echo "== gpu tests"; python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -6 | tee $OUT/gpu_tests.log
echo "== throughput"; python3 benchmarks/collect_throughput.py --results $OUT/collect_throughput.json 2>&1 | tail -10
for name in h100_fullspace h100_dataset; do
  cp data/runs/$name.duckdb $OUT/$name.duckdb
done
echo "== energy re-measure"
timeout -s TERM 150 python3 -m perftune collect --problems-file data/problems/h100_fullspace_issue3.csv \
  --all --energy-only --energy-window 0.5 --db $OUT/h100_fullspace.duckdb --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
timeout -s TERM 150 python3 -m perftune collect --problems-file data/problems/gemm_sampled.csv \
  --dataflows triton --sample 4 --seed 7 --energy-only --energy-window 0.5 \
  --db $OUT/h100_dataset.duckdb --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
echo "== whole space"
timeout -s TERM ${WHOLE_SECONDS:-150} python3 -m perftune collect --problems-file data/problems/gemm_whole.csv \
  --all --db $OUT/h100_dataset.duckdb --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
for name in h100_fullspace h100_dataset; do
  python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $OUT/$name.duckdb
done
