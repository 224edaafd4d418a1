#!/usr/bin/env node
'use strict';
// Finds the LibTorch to build against: an unpacked LibTorch named by LIBTORCH, then a
// pip-installed PyTorch, then the system's (Debian's libtorch-dev). Prints JSON.
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const CONFIG = path.join('share', 'cmake', 'Torch', 'TorchConfig.cmake');
const SYSTEM_DIRS = ['/usr/lib/x86_64-linux-gnu/cmake/Torch', '/usr/lib/aarch64-linux-gnu/cmake/Torch',
  '/usr/lib/cmake/Torch', '/usr/local/share/cmake/Torch', '/usr/share/cmake/Torch'];

function pythonPrefix(python) {
  try {
    const out = execFileSync(python, ['-c', 'import torch.utils; print(torch.utils.cmake_prefix_path)'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60000 });
    return out.trim();
  } catch {
    return null;
  }
}

function findLibTorch(env = process.env) {
  const tried = [];
  if (env.LIBTORCH) {
    const config = path.join(env.LIBTORCH, CONFIG);
    if (fs.existsSync(config)) return { kind: 'LIBTORCH', prefix: env.LIBTORCH, tried };
    tried.push(`LIBTORCH=${env.LIBTORCH}: no ${CONFIG} there`);
  } else {
    tried.push('LIBTORCH: not set');
  }
  for (const python of ['python3', '/usr/bin/python3']) {
    const prefix = pythonPrefix(python);
    if (prefix && fs.existsSync(path.join(prefix, 'Torch', 'TorchConfig.cmake'))) {
      return { kind: 'pip', prefix, tried };
    }
    tried.push(prefix ? `${python}: torch at ${prefix} has no TorchConfig.cmake` : `${python}: no importable torch`);
  }
  for (const dir of SYSTEM_DIRS) {
    if (fs.existsSync(path.join(dir, 'TorchConfig.cmake'))) return { kind: 'system', prefix: null, tried };
    tried.push(`system: no ${dir}`);
  }
  const error = new Error(
    'torch-early-exit: no LibTorch found. Tried:\n  ' + tried.join('\n  ') +
    '\nProvide one of:\n' +
    '  - Debian/Ubuntu: apt-get install libtorch-dev libopenblas0-pthread\n' +
    '  - an unpacked LibTorch zip: LIBTORCH=/path/to/libtorch npm run build\n' +
    '  - a pip-installed PyTorch importable by python3 (pip install torch)');
  error.tried = tried;
  throw error;
}

module.exports = { findLibTorch };

if (require.main === module) {
  try {
    console.log(JSON.stringify(findLibTorch()));
  } catch (error) {
    console.error(error.message);
    process.exit(1);
  }
}
