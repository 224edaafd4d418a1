'use strict';
/**
 * The training both sides of test/distributed.test.ts run: ResNet-20 with the seed's exit
 * after layer1.2.relu2, eight seeded CIFAR-sized inputs, SGD with momentum and weight decay
 * on the early-exit loss. `lib` is the library (the compiled one in a rank, the TypeScript one
 * in the test), so that the ranks and the single-process reference share one recipe.
 */
const path = require('path');

const SETTINGS = { lr: 0.05, momentum: 0.9, weightDecay: 5e-4, lossWeights: [0.3], batch: 8 };

/** The model; `perturb` moves every parameter and buffer, so that only rank 0's broadcast can make the ranks agree. */
function makeModel(lib, fixtures, { perturb = false, bn = 'train' } = {}) {
  const { EarlyExitModel, jit, nn, torch } = lib;
  torch.manualSeed(1);
  const branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
  const model = new EarlyExitModel(jit.load(path.join(fixtures, 'resnet20_scripted.pt')), [['layer1.2.relu2', branch]]).train();
  if (bn === 'eval') model.backbone.eval();
  if (perturb) {
    torch.noGrad(() => {
      for (const t of [...model.parameters(), ...model.buffers()]) if (t.dtype === 'float32') t.add_(0.01);
    });
  }
  return model;
}

/** Eight inputs and labels, the same in every process. */
function makeData(lib) {
  const { torch } = lib;
  torch.manualSeed(3);
  return { x: torch.randn([SETTINGS.batch, 3, 32, 32]), y: torch.randint(0, 10, [SETTINGS.batch]) };
}

function makeOptimizer(lib, model) {
  return new lib.optim.SGD(model.parameters().filter((p) => p.requiresGrad),
    { lr: SETTINGS.lr, momentum: SETTINGS.momentum, weightDecay: SETTINGS.weightDecay });
}

/** The loss of `outputs` on `y`, as trainEarlyExit computes it. */
function loss(lib, outputs, y) {
  return lib.earlyExitLoss(outputs, y, SETTINGS.lossWeights);
}

/** Every parameter and buffer, by name, as plain numbers. */
function snapshot(model) {
  const out = {};
  for (const [name, t] of [...model.namedParameters(), ...model.namedBuffers()]) out[name] = Array.from(t.data(), Number);
  return out;
}

module.exports = { SETTINGS, makeModel, makeData, makeOptimizer, loss, snapshot };
