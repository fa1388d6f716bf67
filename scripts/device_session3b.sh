# H100 session 3, calls 2 and later (issues 3 and 4). PART=throughput: collect_throughput (the
# naive loop now times the collector's own planned configs) and then energy; PART=energy: energy
# of stored sampled rows (17 per problem: cuBLAS and 8 each of triton / triton_splitk, seed 0 as
# they were collected), resumable; PART=whole: the whole-space problems, resumable.
# Carry .whl_gpu and data/runs; copy the returned folder at once.
set -o pipefail
. scripts/device_setup.sh || exit 1
cp data/runs/h100_dataset.duckdb $OUT/h100_dataset.duckdb
if [ "$PART" = throughput ]; then
  echo "== throughput"; timeout 330 python3 benchmarks/collect_throughput.py --results $OUT/collect_throughput.json 2>&1 | grep -v Warn | tail -14
fi
if [ "$PART" = throughput ] || [ "$PART" = energy ]; then
  echo "== energy of stored rows ($((570 - SECONDS)) s)"
  timeout -s TERM $((570 - SECONDS)) python3 -m perftune collect --problems-file data/problems/gemm_sampled.csv \
    --sample 8 --energy-only --energy-window 0.5 --db $OUT/h100_dataset.duckdb --no-progress 2>&1 \
    | grep -E "^(device|statuses|perftune)"
fi
if [ "$PART" = whole ]; then
  echo "== whole space ($((570 - SECONDS)) s)"
  timeout -s TERM $((570 - SECONDS)) python3 -m perftune collect --problems-file data/problems/gemm_whole.csv \
    --all --db $OUT/h100_dataset.duckdb --no-progress 2>&1 | grep -E "^(device|statuses|perftune)"
fi
python3 -c "import duckdb,sys; duckdb.connect(sys.argv[1]).execute('CHECKPOINT')" $OUT/h100_dataset.duckdb
