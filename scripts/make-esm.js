#!/usr/bin/env node
'use strict';
// Writes dist/esm/index.mjs: the ES module entry point, re-exporting the CommonJS build's
// names so that `import { jit } from 'torch-early-exit'` works.
const fs = require('fs');
const path = require('path');

const dist = path.join(__dirname, '..', 'dist');
const source = fs.readFileSync(path.join(dist, 'lib', 'index.js'), 'utf8');
// Names come from the compiled module's export statements, without loading the addon.
const names = new Set();
for (const match of source.matchAll(/exports\.(\w+) = /g)) names.add(match[1]);
for (const match of source.matchAll(/Object\.defineProperty\(exports, "(\w+)"/g)) names.add(match[1]);
names.delete('__esModule');
const lines = [
  "import lib from '../lib/index.js';",
  `export const { ${[...names].sort().join(', ')} } = lib;`,
  'export default lib;',
  '',
];
fs.mkdirSync(path.join(dist, 'esm'), { recursive: true });
fs.writeFileSync(path.join(dist, 'esm', 'index.mjs'), lines.join('\n'));
