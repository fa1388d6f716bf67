# One part of benchmarks/tuner_live.py on the H100 (each problem: three live tunes, then
# triton.autotune's cold first call over the whole Triton space, ~4 minutes). Usage, in a
# device call carrying .whl_gpu:  ONLY="0 1" GPU_TESTS=1 . scripts/device_tuner_live.sh
# Then on CPU: python benchmarks/tuner_live.py --merge part*.json
set -o pipefail
. scripts/device_setup.sh || exit 1
if [ -n "$GPU_TESTS" ]; then
  echo "== gpu tests"; python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -8 | tee $OUT/gpu_tests.log
fi
echo "== tuner_live $ONLY"
timeout -s TERM ${LIVE_SECONDS:-480} python3 benchmarks/tuner_live.py --only $ONLY \
  --results $OUT/tuner_live_part_${ONLY// /_}.json 2>&1 | grep -v Warning | tail -8
