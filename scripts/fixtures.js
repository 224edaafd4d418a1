#!/usr/bin/env node
'use strict';
// Makes the test fixtures with real PyTorch (Debian's python3-torch for /usr/bin/python3):
// the CNNs (make_fixtures.py), then the transformers (make_transformer_fixtures.py), each with its stamp.
const path = require('path');
const { spawnSync } = require('child_process');

const scripts = ['make_fixtures.py', 'make_transformer_fixtures.py'].map((name) => path.join(__dirname, name));
const out = process.argv[2] || path.join(__dirname, '..', 'test', 'fixtures');

function hasTorch(python) {
  return spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

const python = ['/usr/bin/python3', 'python3'].find(hasTorch);
if (!python) {
  console.error('fixtures: no python3 with torch found. Install it: apt-get install python3-torch python3-torchvision');
  process.exit(1);
}
for (const script of scripts) {
  const result = spawnSync(python, [script, out], { stdio: 'inherit' });
  if (result.status !== 0) process.exit(result.status === null ? 1 : result.status);
}
