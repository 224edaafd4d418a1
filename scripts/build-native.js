#!/usr/bin/env node
'use strict';
// Builds the addon with cmake-js against the LibTorch that find-libtorch.js chooses.
const path = require('path');
const { spawnSync } = require('child_process');
const { findLibTorch } = require('./find-libtorch');

let found;
try {
  found = findLibTorch();
} catch (error) {
  console.error(error.message);
  process.exit(1);
}
console.log(`torch-early-exit: building against ${found.kind} LibTorch${found.prefix ? ' at ' + found.prefix : ''}`);
const args = ['compile', '--out', 'build'];
if (found.prefix) args.push(`--CDCMAKE_PREFIX_PATH=${found.prefix}`);
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const result = spawnSync(process.execPath, [cmakeJs, ...args],
  { stdio: 'inherit', cwd: path.join(__dirname, '..'), env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: process.env.CMAKE_BUILD_PARALLEL_LEVEL || '2' } });
process.exit(result.status === null ? 1 : result.status);
