# H100 session 2 (issue 3): whole-space GEMM sweep with NVML energy, time-limited (it resumes
# where it stopped when run again on the returned store), and a whole-space RMSNorm sweep.
set -o pipefail
. scripts/device_setup.sh || exit 1
DB=$OUT/h100_fullspace.duckdb
[ -f data/runs/h100_fullspace.duckdb ] && cp data/runs/h100_fullspace.duckdb $DB
python3 -m perftune collect --family rmsnorm --problems-file data/problems/rmsnorm_smoke.csv \
  --db $DB --energy --energy-window 0.3 --no-progress 2>&1 | tail -12
timeout -s TERM ${SWEEP_SECONDS:-450} python3 -m perftune collect \
  --problems-file data/problems/h100_fullspace_issue3.csv --db $DB --energy --energy-window 0.3 \
  --no-progress 2>&1 | tail -20
python3 -m perftune db stats --db $DB
python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $DB
