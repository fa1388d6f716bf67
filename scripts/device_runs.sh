# Source after device_setup.sh, with RUNS set: copies the carried store
# (data/runs/h100_dataset.duckdb) to STORE, runs each entry of RUNS ("problem files|dataflows|
# extra collect flags") in order on it while LIMIT (seconds since the calling script started,
# default $1) is not spent, then writes this call's rows to $OUT/delta.duckdb.
STORE=/tmp/h100_dataset.duckdb
cp data/runs/h100_dataset.duckdb $STORE
BEFORE=$(date -u +"%Y-%m-%d %H:%M:%S")
for RUN in "${RUNS[@]}"; do
  IFS='|' read -r FILES DATAFLOWS EXTRA <<< "$RUN"
  LEFT=$((${LIMIT:-${1:-560}} - SECONDS)); [ $LEFT -gt 20 ] || break
  echo "== $FILES $DATAFLOWS $EXTRA ($LEFT s left)"
  timeout -s TERM $LEFT python3 -m perftune collect --problems-file $FILES \
    --dataflows $DATAFLOWS $EXTRA --db $STORE --no-progress 2>&1 \
    | grep -E "^(device|statuses|perftune|Error|error)" | head -20
done
python3 scripts/build_dataset.py --export-delta "$BEFORE" $STORE $OUT/delta.duckdb
