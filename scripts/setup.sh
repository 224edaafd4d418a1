#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for torch-early-exit: LibTorch and OpenBLAS from
# Debian's packages, PyTorch for /usr/bin/python3 (fixtures), npm dependencies, the
# native addon (built, then packed as the prebuilt binary), the TypeScript build and
# the fixture models. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libtorch-dev libgloo-dev libdnnl-dev libopenblas0-pthread python3-torch python3-torchvision cmake g++ make)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

npm ci --no-audit --no-fund
npm run build
npm run prebuild
npm run fixtures
