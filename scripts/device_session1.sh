# H100 session 1 (issue 3): smoke sweep, calibration, GPU tests, collector throughput.
# Run through the device tool: . scripts/device_session1.sh   (carry .whl_gpu)
set -o pipefail
. scripts/device_setup.sh || exit 1
DB=$OUT/h100_session1.duckdb
echo "== smoke"; python3 -m perftune collect --db $DB --problem 100x200x300 --problem 1x4096x4096 \
  --sample 4 --no-progress 2>&1 | tee $OUT/smoke.log || exit 1
echo "== calibrate"; python3 -m perftune device --calibrate --db $DB --json | tee $OUT/device.json
echo "== gpu tests"; python3 -m pytest -q -m gpu tests 2>&1 | tail -15
echo "== throughput"; python3 benchmarks/collect_throughput.py 2>&1 | tail -25
cp benchmarks/results/collect_throughput.json $OUT/
python3 -m perftune db stats --db $DB
