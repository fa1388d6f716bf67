# H100 session 3, last call (issues 4 and 6): finish the whole-space problems, then the live
# time-energy benchmark (benchmarks/tuner_energy.py) on the same store, whose new energy rows
# join the dataset. Carry .whl_gpu and data/runs; copy the returned folder at once.
set -o pipefail
. scripts/device_setup.sh || exit 1
cp data/runs/h100_dataset.duckdb $OUT/h100_dataset.duckdb
echo "== whole space"
timeout -s TERM ${WHOLE_SECONDS:-170} python3 -m perftune collect --problems-file data/problems/gemm_whole.csv \
  --all --db $OUT/h100_dataset.duckdb --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
echo "== tuner_energy ($((575 - SECONDS)) s)"
timeout -s TERM $((575 - SECONDS)) python3 benchmarks/tuner_energy.py --store $OUT/h100_dataset.duckdb \
  --results $OUT/tuner_energy.json 2>&1 | grep -v Warn | tail -30
python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $OUT/h100_dataset.duckdb
