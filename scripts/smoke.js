#!/usr/bin/env node
'use strict';
// A forward, an exit and a training step of the demo's MNIST CNN with a fixed exit branch, on
// fixed inputs made from sines (V8's own, the same on every processor; no random generator,
// whose draws differ between LibTorch versions), printed as JSON. scripts/arm64-smoke.sh runs it on linux-arm64 under qemu and on
// the host, and compares the two: another architecture, BLAS and LibTorch version, the same
// numbers within float rounding.
//
//   node scripts/smoke.js [path/to/the/library]     (default: this checkout's dist/lib)
const path = require('path');

const library = path.resolve(process.argv[2] || path.join(__dirname, '..', 'dist', 'lib'));
const { EarlyExitModel, earlyExitLoss, jit, nn, optim, torch } = require(library);

torch.setNumThreads(1);
const wave = (n, step, shape) => torch.tensor(Float32Array.from({ length: n }, (_, i) => Math.sin(i * step)), { shape });
const x = wave(4 * 784, 0.37, [4, 1, 28, 28]);
const labels = torch.tensor(new BigInt64Array([0n, 1n, 2n, 3n]));
const branch = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10));
branch.loadStateDict({ '2.weight': wave(7840, 0.11, [10, 784]).mul(0.03), '2.bias': wave(10, 0.5, [10]).mul(0.1) });
const model = new EarlyExitModel(jit.load(path.join(__dirname, '..', 'models', 'mnist_cnn.pt')), [['features1', branch]]).eval();

const values = (t) => Array.from(t.detach().cpu().reshape([-1]).data(), Number);
const [exit0, final] = torch.noGrad(() => model.forward(x));
const stopped = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0] });

model.freezeBackbone().train();
const optimizer = new optim.SGD(model.parameters(), { lr: 0.1, momentum: 0.9 });
const loss = earlyExitLoss(model.forward(x), labels, [0.3]);
optimizer.zeroGrad();
loss.backward();
optimizer.step();

console.log(JSON.stringify({
  libtorch: torch.version.libtorch,
  arch: process.arch,
  binary: path.basename(torch.version.binary.file || ''),
  exit: values(exit0),
  final: values(final),
  stoppedAt: stopped.exit,
  stoppedOutput: values(stopped.output),
  loss: loss.item(),
  weightAfterStep: values(branch.stateDict()['2.weight']).slice(0, 64),
  biasAfterStep: values(branch.stateDict()['2.bias']),
}));
