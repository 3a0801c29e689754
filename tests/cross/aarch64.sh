#!/usr/bin/env bash
# Cross-compiles the C++ library and its CPU tests for aarch64 (the portable "baseline" SIMD
# kernels: NEON through GCC vector extensions) and runs `ctest -L cpu` under qemu-user, once with
# XENTKIT_SIMD=auto and once with XENTKIT_SIMD=scalar. Debian/Ubuntu; run from the repository
# root. Installs qemu-user, g++-aarch64-linux-gnu and libgtest-dev:arm64 when they are missing.
#
#   bash tests/cross/aarch64.sh            # build directory build/aarch64
#   JOBS=4 BUILD_DIR=/tmp/xk-arm bash tests/cross/aarch64.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/aarch64}"
JOBS="${JOBS:-1}"
TOOLCHAIN="$ROOT/tests/cross/aarch64-linux-gnu.cmake"

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# ---- tools and the target's GoogleTest, installed only when missing --------------------------
missing=()
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || missing+=(g++-aarch64-linux-gnu)
if [[ ! -f /usr/lib/aarch64-linux-gnu/cmake/GTest/GTestConfig.cmake ]]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  missing+=(libgtest-dev:arm64)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "aarch64.sh: installing ${missing[*]}"
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

echo "aarch64.sh: $(qemu-aarch64 --version | head -n1)"
echo "aarch64.sh: $(aarch64-linux-gnu-g++ --version | head -n1)"

# ---- configure and build ---------------------------------------------------------------------
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S "$ROOT" -B "$BUILD_DIR" "${generator[@]}" \
  -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" \
  -DXENTKIT_USE_CUDA=OFF -DXENTKIT_BUILD_TESTS=ON -DXENTKIT_BUILD_PYTHON=OFF \
  -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$JOBS"

# ---- the CPU tests under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR of the toolchain) -------
status=0
for level in auto scalar; do
  echo "aarch64.sh: ctest -L cpu with XENTKIT_SIMD=$level"
  if ! XENTKIT_SIMD="$level" ctest --test-dir "$BUILD_DIR" -L cpu --output-on-failure; then
    echo "aarch64.sh: tests FAILED with XENTKIT_SIMD=$level" >&2
    status=1
  fi
done
exit "$status"
