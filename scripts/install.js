#!/usr/bin/env node
'use strict';
// `npm install`: nothing to compile when a prebuilt binary fits the LibTorch found here;
// otherwise build from source against it.
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.join(__dirname, '..');

function prebuiltFits() {
  let libtorch;
  try {
    libtorch = require(path.join(root, 'dist', 'lib', 'libtorch.js'));
  } catch {
    return null; // A source checkout: no compiled loader, no prebuilt binaries.
  }
  const { found } = libtorch.findRuntimeLibTorch();
  const choice = libtorch.chooseBinary(root, found);
  return choice.file && choice.file.includes(`${path.sep}prebuilds${path.sep}`) ? choice.file : null;
}

const prebuilt = prebuiltFits();
if (prebuilt) {
  console.log(`torch-early-exit: using the prebuilt binary ${path.relative(root, prebuilt)}`);
  process.exit(0);
}
const result = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { stdio: 'inherit', cwd: root });
process.exit(result.status === null ? 1 : result.status);
