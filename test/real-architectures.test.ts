/** Early exits on torchvision's ResNet-18 and MobileNetV2, scripted and traced, as users export them. */
import { EarlyExitModel, Tensor, earlyExitLoss, exitDecisions, exitScores, jit, nn, optim, torch, trainEarlyExit } from '../lib';
import { CAN_EXPORT, fixture, fromRef, maxAbsDiff, reference } from './helpers';

const tv = () => reference('torchvision_reference.json');

/** A pooled linear exit per point; `channels` are the point's output channels. */
function withExits(file: string, points: Array<[string, number]>): EarlyExitModel {
  torch.manualSeed(0);
  return new EarlyExitModel(jit.load(fixture(file)), points.map(([point, channels]) =>
    [point, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))])).eval();
}

/** Halfway across the widest gap between the scores: some samples meet it, none sits near it. */
function widestGap(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  let best = 0;
  for (let i = 1; i < sorted.length; i++) if (sorted[i] - sorted[i - 1] > sorted[best + 1] - sorted[best]) best = i - 1;
  // Batch 1 and batch 4 convolutions differ in the last bits: keep the decisions clear of that.
  expect(sorted[best + 1] - sorted[best]).toBeGreaterThan(1e-4);
  return (sorted[best] + sorted[best + 1]) / 2;
}

const RESNET18: Array<[string, number]> = [['layer1.0', 64], ['layer2.1', 128], ['layer3', 256]];
const MOBILENET_V2: Array<[string, number]> = [['features.3', 24], ['features.6', 32], ['features.14', 160]];
const cases: Array<[string, Array<[string, number]>, string]> = [
  ['resnet18_scripted.pt', RESNET18, 'resnet18'],
  ['resnet18_traced.pt', RESNET18, 'resnet18'],
  ['mobilenet_v2_scripted.pt', MOBILENET_V2, 'mobilenet_v2'],
  ['mobilenet_v2_traced.pt', MOBILENET_V2, 'mobilenet_v2'],
];

describe('hooks on torchvision models see what Python\'s forward hooks see', () => {
  it.each(cases)('%s', (file, points, name) => {
    const model = new EarlyExitModel(jit.load(fixture(file)), points.map(([point]) => [point, nn.Identity()])).eval();
    const outputs = torch.noGrad(() => model.forward(fromRef(tv().input)));
    points.forEach(([point], i) => expect([point, maxAbsDiff(outputs[i], tv()[`${name}_hooks`][point]) <= 1e-4]).toEqual([point, true]));
    expect(maxAbsDiff(outputs[3], tv()[name])).toBeLessThanOrEqual(1e-4);
  });
});

describe('per-sample exits on torchvision models, through _forward_impl, Sequential stages and blocks', () => {
  it.each(cases)('%s: every exit is a batch boundary; samples leave as they would alone', (file, points, name) => {
    const model = withExits(file, points);
    expect(model.exitsPerSample).toEqual([true, true, true]);
    const x = fromRef(tv().input);
    const outputs = torch.noGrad(() => model.forward(x));
    expect(maxAbsDiff(outputs[3], tv()[name])).toBeLessThanOrEqual(1e-4);
    const scores = exitScores(outputs, 'entropy');
    const thresholds = scores.slice(0, 3).map(widestGap);
    const expected = exitDecisions(scores, 'entropy', thresholds);
    expect(new Set(expected).size).toBeGreaterThanOrEqual(2);
    const policy = { criterion: 'entropy' as const, thresholds, perSample: true };
    for (const compiled of [false, true]) {
      if (compiled) model.optimizeForInference();
      const result = model.forwardEarlyExit(x, policy);
      expect(result.exits).toEqual(expected);
      for (let j = 0; j < 4; j++) {
        const alone = model.forwardEarlyExit(x.narrow(0, j, 1), policy);
        expect(alone.exits).toEqual([expected[j]]);
        expect(maxAbsDiff(result.output.narrow(0, j, 1), alone.output)).toBeLessThanOrEqual(1e-5);
        expect(maxAbsDiff(result.output.select(0, j), outputs[expected[j]].select(0, j))).toBeLessThanOrEqual(1e-4);
      }
    }
  });

  // Inside a residual block the block's input is read after the exit (the skip connection):
  // compiled, it goes on with the samples that stay.
  const inside: Array<[string, Array<[string, number]>]> = [
    ['resnet18_scripted.pt', [['layer1.0.conv2', 64], ['layer2.1', 128], ['layer3', 256]]],
    ['resnet18_traced.pt', [['layer1.0.conv2', 64], ['layer2.1', 128], ['layer3', 256]]],
    ['mobilenet_v2_scripted.pt', [['features.3.conv.0', 144], ['features.6', 32], ['features.14', 160]]],
  ];
  it.each(inside)('%s: inside a residual block, refused uncompiled, naming the way; compiled, samples leave as they would alone', (file, points) => {
    const model = withExits(file, points);
    expect(model.exitsPerSample).toEqual([false, true, true]);
    const x = fromRef(tv().input);
    const scores = exitScores(torch.noGrad(() => model.forward(x)), 'entropy');
    const thresholds = scores.slice(0, 3).map(widestGap);
    const expected = exitDecisions(scores, 'entropy', thresholds);
    // Some samples leave inside the block, and some go on past it.
    expect(expected.filter((exit) => exit === 0).length).toBeGreaterThanOrEqual(1);
    expect(expected.filter((exit) => exit > 0).length).toBeGreaterThanOrEqual(1);
    const policy = { criterion: 'entropy' as const, thresholds, perSample: true };
    expect(() => model.forwardEarlyExit(x, policy)).toThrow(`samples cannot leave the batch alone at exit '${points[0][0]}'`);
    // ResNet's block is plain code; MobileNetV2's residual sits behind an if on a setting,
    // which only freezing folds, so the uncompiled model cannot promise the compiled one.
    let refusal = '';
    try {
      model.forwardEarlyExit(x, policy);
    } catch (error) {
      refusal = (error as Error).message;
    }
    expect(refusal.includes('(compiled, it can: optimizeForInference() carries every batch-sized value')).toBe(file.startsWith('resnet18'));
    for (const optimize of [false, undefined]) { // frozen, and oneDNN where this build allows it
      model.optimizeForInference({ optimize });
      expect(model.inferenceExitsPerSample).toEqual([true, true, true]);
      const result = model.forwardEarlyExit(x, policy);
      expect(result.exits).toEqual(expected);
      for (let j = 0; j < 4; j++) {
        const alone = model.forwardEarlyExit(x.narrow(0, j, 1), policy);
        expect([j, alone.exits]).toEqual([j, [expected[j]]]);
        expect([j, maxAbsDiff(result.output.narrow(0, j, 1), alone.output) <= 1e-5]).toEqual([j, true]);
      }
    }
  });

  it('says where samples cannot leave, and why', () => {
    const resnet = jit.load(fixture('resnet18_scripted.pt'));
    // Inside a block the block's input is still needed (the skip connection).
    expect(['layer1', 'layer4.1', 'layer1.0.conv1', 'layer2.0.bn2'].map((n) => resnet.getModule(n).isBatchBoundary))
      .toEqual([true, true, false, false]);
    const mobilenet = jit.load(fixture('mobilenet_v2_scripted.pt'));
    // features.1.conv is reached from two branches of an if (with and without the residual): one call.
    expect(mobilenet.getModule('features.1.conv').callsPerForward).toBe(1);
    expect(mobilenet.getModule('features.1.conv').isBatchBoundary).toBe(false);
    // Such an exit stops the forward, compiled or not, with the same output.
    const conditional = withExits('mobilenet_v2_scripted.pt', [['features.1.conv', 16]]);
    const x = fromRef(tv().input);
    const [exitOutput] = torch.noGrad(() => conditional.forward(x));
    const stop = { criterion: 'entropy' as const, thresholds: [100] };
    expect(maxAbsDiff(conditional.forwardEarlyExit(x, stop).output, exitOutput)).toBe(0);
    conditional.optimizeForInference();
    expect(maxAbsDiff(conditional.forwardEarlyExit(x, stop).output, exitOutput)).toBeLessThanOrEqual(1e-5);
    expect(['features', 'features.18', 'classifier'].map((n) => mobilenet.getModule(n).isBatchBoundary)).toEqual([true, true, true]);
    const model = withExits('resnet18_scripted.pt', [['layer1.0.conv1', 64]]);
    expect(() => model.forwardEarlyExit(fromRef(tv().input), { criterion: 'entropy', thresholds: [1], perSample: true }))
      .toThrow(/samples cannot leave the batch alone at exit 'layer1\.0\.conv1'/);
  });
});

describe('a module called more than once', () => {
  it('BasicBlock\'s relu runs twice: training sees the last call, and a stop at it is refused with the reason', () => {
    const model = withExits('resnet18_scripted.pt', [['layer1.0.relu', 64]]);
    expect(model.exitCalls).toEqual([2]);
    const x = fromRef(tv().input);
    // forward() keeps the last call's output, as Distiller's BranchPoint does: the block's output.
    const [exit] = torch.noGrad(() => model.forward(x));
    const block = withExits('resnet18_scripted.pt', [['layer1.0', 64]]);
    (block.branches[0] as nn.Sequential).loadStateDict((model.branches[0] as nn.Sequential).stateDict());
    expect(maxAbsDiff(exit, torch.noGrad(() => block.forward(x))[0])).toBe(0);
    expect(() => model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [10] }))
      .toThrow(/exit 'layer1\.0\.relu' is called 2 times in one forward: training and getExitsOutputs use its last call's output/);
    expect(model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [null] }).exit).toBe(1);
    expect(() => model.optimizeForInference()).toThrow(/'layer1\.0\.relu' is called 2 times in one forward/);
  });
});

describe('a frozen backbone stays frozen', () => {
  it('trainEarlyExit moves the exits only: batch-norm statistics and the final output stay bit for bit', () => {
    const model = withExits('resnet18_scripted.pt', [['layer2', 128]]).freezeBackbone();
    const x = fromRef(tv().input);
    const buffers = model.backbone.namedBuffers().map(([name, t]) => [name, t.clone()] as [string, Tensor]);
    const before = torch.noGrad(() => model.forward(x));
    const branchBefore = (model.branches[0] as nn.Sequential).parameters()[0].clone();
    torch.manualSeed(5);
    const data = { images: torch.randn([16, 3, 64, 64]), labels: torch.randint(0, 10, [16]) };
    trainEarlyExit(model, data, { epochs: 2, batchSize: 8, lossWeights: [0.5], lr: 0.1 });
    expect(model.backbone.training).toBe(false);
    model.eval();
    for (const [name, value] of model.backbone.namedBuffers()) {
      expect([name, maxAbsDiff(value, buffers.find(([n]) => n === name)![1])]).toEqual([name, 0]);
    }
    const after = torch.noGrad(() => model.forward(x));
    expect(maxAbsDiff(after[1], before[1])).toBe(0);
    expect(maxAbsDiff((model.branches[0] as nn.Sequential).parameters()[0], branchBefore)).toBeGreaterThan(0);
    // Thawed, the backbone trains again, batch norm included.
    model.freezeBackbone(false).train();
    expect(model.backbone.training).toBe(true);
  });
});

/** The same models exported by torch.export with a dynamic batch (PyTorch 2.6 and later). */
const describeExported = CAN_EXPORT ? describe : describe.skip;
describeExported('torchvision models exported by torch.export', () => {
  const exportedCases: Array<[string, Array<[string, number]>]> = [
    // layer1.0.conv2 is inside a residual block: the block's input is read after it.
    ['resnet18', [['layer1.0.conv2', 64], ['layer2.1', 128], ['layer3', 256]]],
    ['mobilenet_v2', MOBILENET_V2],
  ];

  it.each(exportedCases)('%s: modules, hooks and output equal eager PyTorch', (name, points) => {
    const backbone = torch.export.load(fixture(`${name}_exported.pt2`));
    expect(backbone.namedModules().map(([module]) => module)).toEqual((tv()[`${name}_exported_modules`] as Array<[string, string]>).map(([module]) => module));
    const model = new EarlyExitModel(backbone, points.map(([point]) => [point, nn.Identity()])).eval();
    const outputs = torch.noGrad(() => model.forward(fromRef(tv().input)));
    points.forEach(([point], i) => expect([point, maxAbsDiff(outputs[i], tv()[`${name}_hooks`][point]) <= 1e-5]).toEqual([point, true]));
    expect(maxAbsDiff(outputs[3], tv()[name])).toBeLessThanOrEqual(1e-5);
  });

  it.each(exportedCases)("%s: two SGD steps with Distiller's weighted loss equal PyTorch's, batch norm and dropout included", (name) => {
    const ref = tv()[`${name}_exported_training`];
    const branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ref.channels, 10));
    branch.loadStateDict({ '2.weight': fromRef(ref.branch_state_dict['2.weight']), '2.bias': fromRef(ref.branch_state_dict['2.bias']) });
    const model = new EarlyExitModel(torch.export.load(fixture(`${name}_exported.pt2`)), [[ref.point, branch]]).train();
    const { lr, momentum, weightDecay, steps, lossWeight, seed } = ref.settings;
    const optimizer = new optim.SGD(model.parameters(), { lr, momentum, weightDecay });
    const x = fromRef(ref.input);
    const y = fromRef(ref.target);
    torch.manualSeed(seed);
    for (let i = 0; i < steps; i++) {
      const loss = earlyExitLoss(model.forward(x), y, [lossWeight]);
      optimizer.zeroGrad();
      loss.backward();
      optimizer.step();
      expect(loss.item()).toBeCloseTo(ref.losses[i], 5);
    }
    const state = model.backbone.stateDict();
    for (const [key, expected] of Object.entries<any>(ref.after)) {
      expect([key, maxAbsDiff(state[key].float(), expected) <= 1e-5]).toEqual([key, true]);
    }
    const branchState = branch.stateDict();
    for (const [key, expected] of Object.entries<any>(ref.branch_after)) expect(maxAbsDiff(branchState[key], expected)).toBeLessThanOrEqual(1e-5);
  });

  it.each(exportedCases)('%s: per-sample exits, inside a residual block too, equal each sample run alone', (name, points) => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(torch.export.load(fixture(`${name}_exported.pt2`)), points.map(([point, channels]) =>
      [point, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))])).eval();
    expect(model.exitsPerSample).toEqual([true, true, true]);
    if (name === 'resnet18') {
      const scripted = new EarlyExitModel(jit.load(fixture('resnet18_scripted.pt')), [['layer1.0.conv2', nn.Identity()]]);
      expect(scripted.exitsPerSample).toEqual([false]);
    }
    const x = fromRef(tv().input);
    const outputs = torch.noGrad(() => model.forward(x));
    const scores = exitScores(outputs, 'entropy');
    const thresholds = scores.slice(0, 3).map(widestGap);
    const expected = exitDecisions(scores, 'entropy', thresholds);
    expect(new Set(expected).size).toBeGreaterThanOrEqual(2);
    const policy = { criterion: 'entropy' as const, thresholds, perSample: true };
    const result = model.forwardEarlyExit(x, policy);
    expect(result.exits).toEqual(expected);
    for (let j = 0; j < 4; j++) {
      const alone = torch.noGrad(() => model.forward(x.narrow(0, j, 1)));
      expect(maxAbsDiff(result.output.narrow(0, j, 1), alone[expected[j]])).toBeLessThanOrEqual(1e-5);
    }
  });

  it.each(exportedCases)('%s: compiled by optimizeForInference, every exit stops as the program does, per sample as the program', (name, points) => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(torch.export.load(fixture(`${name}_exported.pt2`)), points.map(([point, channels]) =>
      [point, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))])).eval();
    const x = fromRef(tv().input);
    const outputs = torch.noGrad(() => model.forward(x));
    const thresholds = exitScores(outputs, 'entropy').slice(0, 3).map(widestGap);
    // Compiled, inside ResNet-18's block too: the block's input is carried past the exit.
    const policy = { criterion: 'entropy' as const, thresholds, perSample: true };
    const interpreted = model.forwardEarlyExit(x, policy);
    model.optimizeForInference();
    expect(maxAbsDiff(model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [null, null, null] }).output, tv()[name])).toBeLessThanOrEqual(1e-4);
    points.forEach(([point], i) => {
      const stopped = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: points.map((_, j) => (j === i ? 100 : null)) });
      expect([point, stopped.exit, maxAbsDiff(stopped.output, outputs[i]) <= 1e-4]).toEqual([point, i, true]);
    });
    expect(model.inferenceExitsPerSample).toEqual([true, true, true]);
    const compiled = model.forwardEarlyExit(x, policy);
    expect(compiled.exits).toEqual(interpreted.exits);
    expect(new Set(compiled.exits).size).toBeGreaterThanOrEqual(2);
    expect(maxAbsDiff(compiled.output, interpreted.output)).toBeLessThanOrEqual(1e-4);
  });
});
