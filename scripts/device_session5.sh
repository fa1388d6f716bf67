# H100 session 5 (issue 5): the whole config space of large training problems
# (data/problems/gemm_whole_large.csv, smallest first), resuming the shipped H100 store.
# Carry .whl_gpu and data/runs/h100_dataset.duckdb. Only this call's rows come back, as a small
# store $OUT/delta.duckdb (the whole store is over the 16 MiB a returned file may have); merge
# it here with `python scripts/build_dataset.py --merge-into data/runs/h100_dataset.duckdb
# <delta>`, then run again until the list is done or device time runs out.
set -o pipefail
. scripts/device_setup.sh || exit 1
STORE=/tmp/h100_dataset.duckdb
cp data/runs/h100_dataset.duckdb $STORE
BEFORE=$(date -u +"%Y-%m-%d %H:%M:%S")
echo "== large whole space ($((540 - SECONDS)) s)"
timeout -s TERM $((540 - SECONDS)) python3 -m perftune collect \
  --problems-file data/problems/gemm_whole_large.csv --all --db $STORE \
  --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
python3 scripts/build_dataset.py --export-delta "$BEFORE" $STORE $OUT/delta.duckdb
