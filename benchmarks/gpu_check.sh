#!/usr/bin/env bash
# The device check of the CUDA build, in one run (about 8 minutes on an H100):
#   nvidia-smi; build and install the package with the CUDA kernels and the C++ tests (one CMake
#   tree); ctest -L gpu; pytest -m gpu tests/python; compute-sanitizer memcheck, racecheck and
#   synccheck over the C++ device tests; benchmarks/bench_gpu.py.
# Every step runs under `timeout` and the script goes on past a failed one; all output goes under
# ${OUT:-./gpu_out} (seven files), with summary.txt listing each step's exit status. Without a CUDA
# device it says "no CUDA device" and exits 2 within seconds.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   OUT=/tmp/o PYTHON=python3.12 CUDAARCHS=90 bash benchmarks/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 4)}"
BUILD="${BUILD:-build/gpu}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
overall=0

# step NAME SECONDS LOG COMMAND...: runs COMMAND under timeout, appends its output to LOG and its
# exit status (124: timed out) to the summary; never stops the script.
step() {
  local name="$1" seconds="$2" log="$3"
  shift 3
  local start rc
  start=$(date +%s)
  echo "==== $name: $*" >>"$log"
  set +e
  timeout -k 10 "$seconds" "$@" >>"$log" 2>&1
  rc=$?
  set -e
  printf '%-28s rc=%-4s %4ss  (%s)\n' "$name" "$rc" "$(($(date +%s) - start))" "$log" \
    | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then overall=1; fi
  return 0
}

{
  echo "xentkit device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >>"$SUMMARY"

# ---- 0. a device, or stop now ---------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 ||
   ! timeout -k 5 20 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 ||
   ! timeout -k 5 20 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "no CUDA device (nvidia-smi missing or lists no GPU)" | tee -a "$SUMMARY" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv \
  >>"$SUMMARY" 2>&1 || true
# The device's own architecture only, SASS and PTX (the default list also makes sm_75 and sm_80
# SASS: a slower build).
if [ -z "${CUDAARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  if [[ "$cap" =~ ^[0-9]+$ ]]; then export CUDAARCHS="$cap"; fi
fi
echo "CUDAARCHS=${CUDAARCHS:-default}" >>"$SUMMARY"

# ---- 1. build: the package (CUDA kernels) and the C++ tests in one tree ----------------------
export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
# The C++ tests need GoogleTest: without it the package is built alone and the C++ steps fail.
TESTS=OFF
for f in /usr/lib/*/libgtest.a /usr/lib/libgtest.a /usr/local/lib/libgtest.a \
         /usr/lib/*/cmake/GTest /usr/local/lib/cmake/GTest; do
  if [ -e "$f" ]; then TESTS=ON; fi
done
if [ "$TESTS" = OFF ]; then
  echo "GoogleTest not found: C++ device tests not built" | tee -a "$SUMMARY"
fi
step build-install 300 "$OUT/build.log" \
  env XENTKIT_USE_CUDA=ON "$PYTHON" -m pip install --no-build-isolation --no-deps \
  -Cbuild-dir="$BUILD" -Ccmake.define.XENTKIT_BUILD_TESTS="$TESTS" \
  -Ccmake.define.XENTKIT_USE_CUDA=ON .
step import-check 60 "$OUT/build.log" "$PYTHON" -c \
  "import xentkit as x, xentkit._core as c; print(x.__file__, 'built', x.cuda_built(), \
'available', x.cuda_available(), repr(c.device_kernel_problem()))"
# The C++ device tests (built with the package above; rebuilt here if that tree lacks them).
if [ "$TESTS" = ON ] && [ ! -x "$BUILD/tests/cpp/xentkit_cuda_device_tests" ]; then
  step build-cpp-tests 240 "$OUT/build.log" bash -c \
    "cmake -S . -B '$BUILD-cpp' -G Ninja -DXENTKIT_USE_CUDA=ON -DXENTKIT_BUILD_TESTS=ON \
       -DXENTKIT_BUILD_PYTHON=OFF && cmake --build '$BUILD-cpp' -j '$JOBS' \
       --target xentkit_cuda_device_tests"
  BUILD="$BUILD-cpp"
fi
DEVICE_TESTS="$BUILD/tests/cpp/xentkit_cuda_device_tests"

# ---- 2. the C++ and Python device tests -------------------------------------------------------
step ctest-gpu 240 "$OUT/ctest.log" ctest --test-dir "$BUILD" -L gpu --output-on-failure
step pytest-gpu 240 "$OUT/pytest.log" "$PYTHON" -m pytest -m gpu tests/python -q -rs \
  -p no:cacheprovider

# ---- 3. compute-sanitizer over the C++ device tests (the first-run cases) ---------------------
SAN="$OUT/sanitizer.log"
if command -v compute-sanitizer >/dev/null 2>&1 && [ -x "$DEVICE_TESTS" ]; then
  FIRST='*StagingWindow*:*LayoutEdges*:*LongRows*:*ElementwiseTails*:*BadLabels*:*BadProbabilities*'
  step memcheck 150 "$SAN" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$DEVICE_TESTS" --gtest_filter="$FIRST"
  step racecheck 120 "$SAN" compute-sanitizer --tool racecheck --racecheck-report all \
    --error-exitcode 9 "$DEVICE_TESTS" --gtest_filter='*LongRows*:*StagingWindow*/0:*LayoutEdges*/0'
  step synccheck 90 "$SAN" compute-sanitizer --tool synccheck --error-exitcode 9 \
    "$DEVICE_TESTS" --gtest_filter='*LongRows*:*StagingWindow*/0:*LayoutEdges*/0'
else
  echo "compute-sanitizer or $DEVICE_TESTS missing: sanitizer steps skipped" | tee -a "$SUMMARY"
  overall=1
fi

# ---- 4. the benchmark -------------------------------------------------------------------------
step bench-gpu 180 "$OUT/bench.md" "$PYTHON" benchmarks/bench_gpu.py

echo "overall: $([ "$overall" -eq 0 ] && echo ok || echo FAILED)" | tee -a "$SUMMARY"
exit "$overall"
