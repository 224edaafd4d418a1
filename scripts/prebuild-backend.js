#!/usr/bin/env node
'use strict';
// prebuildify calls this in place of node-gyp (`rebuild --target=... --release`): the
// addon is a cmake-js build against the LibTorch that find-libtorch.js chooses.
const path = require('path');
const { spawnSync } = require('child_process');

const result = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { stdio: 'inherit', cwd: path.join(__dirname, '..') });
process.exit(result.status === null ? 1 : result.status);
