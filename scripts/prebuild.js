#!/usr/bin/env node
'use strict';
// `npm run prebuild`: a Node-API prebuilt binary with prebuildify (cmake-js as the backend)
// in prebuilds/<platform>-<arch>/, named for the LibTorch version and flavour it was built
// against: torch-early-exit.libtorch-1.13.0.cpu.node. One binary serves every Node version
// with Node-API 8.
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.join(__dirname, '..');
const prebuildify = require.resolve('prebuildify/bin.js');
const backend = path.join(__dirname, 'prebuild-backend.js');
const result = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--node-gyp', backend],
  { stdio: 'inherit', cwd: root, env: { ...process.env, PREBUILD_NODE_GYP: backend } });
if (result.status !== 0) process.exit(result.status === null ? 1 : result.status);

const folder = path.join(root, 'prebuilds', `${process.platform}-${os.arch()}`);
const built = fs.readdirSync(folder).filter((file) => file.endsWith('.node') && !file.includes('.libtorch-'));
if (built.length !== 1) {
  console.error(`prebuild: expected one new binary in ${folder}, found ${built.join(', ') || 'none'}`);
  process.exit(1);
}
const file = path.join(folder, built[0]);
// Ask the binary itself what it was compiled against.
const probe = spawnSync(process.execPath, ['-p', `const b = require(${JSON.stringify(file)}); b.libtorchVersion + ' ' + (b.builtWithCuda ? 'cuda' : 'cpu')`],
  { encoding: 'utf8' });
if (probe.status !== 0) {
  console.error(`prebuild: cannot load ${file}:\n${probe.stderr}`);
  process.exit(1);
}
const [version, flavour] = probe.stdout.trim().split(' ');
const base = /^(\d+\.\d+\.\d+)/.exec(version)[1];
const target = path.join(folder, `torch-early-exit.libtorch-${base}.${flavour}.node`);
fs.renameSync(file, target);
console.log(`prebuild: ${path.relative(root, target)}`);
