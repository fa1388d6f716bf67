# Issue 4 dataset collection on one GPU, time-limited and resumable: carry data/runs/ with the
# store of the last call (data/runs/$DATASET_DB) and it goes on where it stopped.
# STEPS lists the collections in order, separated by ';' (each: a problems file under
# data/problems/ and perftune collect flags). Calibration runs first when CALIBRATE=1.
set -o pipefail
. scripts/device_setup.sh || exit 1
NAME=${DATASET_DB:-h100_dataset.duckdb}
DB=$OUT/$NAME
[ -f data/runs/$NAME ] && cp data/runs/$NAME $DB
END=$(( $(date +%s) + ${SWEEP_SECONDS:-500} ))
left() { echo $(( END - $(date +%s) )); }
[ "${CALIBRATE:-1}" = 1 ] && python3 -m perftune device --db $DB --calibrate --json | grep -E "peak|bandwidth"
STEPS=${STEPS:-"gemm_sampled.csv --sample 40; gemm_whole.csv --all"}
IFS=';' read -ra steps <<< "$STEPS"
for spec in "${steps[@]}"; do
  [ $(left) -gt 20 ] || break
  set -- $spec; file=$1; shift
  echo "== $file $* ($(left) s left)"
  timeout -s TERM $(left) python3 -m perftune collect --problems-file data/problems/$file \
    --db $DB --no-progress "$@" 2>&1 | grep -E "^(device|statuses|perftune)" 
done
python3 -m perftune db stats --db $DB
python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $DB
