# Issue 4 dataset collection on one GPU, time-limited and resumable: carry data/runs/ with the
# store of the last call (data/runs/$DATASET_DB) and it goes on where it stopped.
# Order: calibration (once per device), the sampled problems (cuBLAS on each), the whole-space
# problems, then a small energy pass (sample of 4 Triton configs per problem, seed 7).
set -o pipefail
. scripts/device_setup.sh || exit 1
DB=$OUT/${DATASET_DB:-h100_dataset.duckdb}
[ -f data/runs/${DATASET_DB:-h100_dataset.duckdb} ] && cp data/runs/${DATASET_DB:-h100_dataset.duckdb} $DB
END=$(( $(date +%s) + ${SWEEP_SECONDS:-500} ))
left() { echo $(( END - $(date +%s) )); }
python3 -m perftune device --db $DB --calibrate --json | tail -20
for spec in "gemm_sampled.csv --sample ${SAMPLE:-40}" "gemm_whole.csv --all" \
            "${ENERGY_FILE:-gemm_sampled.csv} --dataflows triton --sample 4 --seed 7 --energy --energy-window 0.3"; do
  [ $(left) -gt 20 ] || break
  set -- $spec; file=$1; shift
  echo "== $file $* ($(left) s left)"
  timeout -s TERM $(left) python3 -m perftune collect --problems-file data/problems/$file \
    --db $DB --no-progress "$@" 2>&1 | tail -8
done
python3 -m perftune db stats --db $DB
python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $DB
