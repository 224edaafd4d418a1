/**
 * advise: the candidates against the architectures' own structure, the backbone left as it
 * was, the table against the returned ramps run on their own, the predicted latency against
 * a sample-by-sample simulation written here, and the greedy search against exhaustive
 * search over every set of up to three exits.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  Advice, CandidateCosts, EarlyExitModel, HeldOutOutputs, Tensor, advise, calibrateSet, candidatePoints, chooseExits, collectOutputs,
  costsOf, defaultRamp, jit, loadMnist, torch, trainEarlyExit,
} from '../lib';
import { fixture } from './helpers';

const CLI = path.join(__dirname, '..', 'bin', 'torch-early-exit.js');

describe('candidatePoints', () => {
  it('ResNet-20: every block and the stem, a stage and its last block once (as the stage), the output not', () => {
    const backbone = jit.load(fixture('resnet20_scripted.pt')).eval();
    const found = candidatePoints(backbone, torch.randn([2, 3, 32, 32]));
    expect(found.map((c) => c.point)).toEqual([
      'conv1', 'bn1', 'relu', 'layer1.0', 'layer1.1', 'layer1', 'layer2.0', 'layer2.1', 'layer2', 'layer3.0', 'layer3.1', 'layer3', 'avgpool',
    ]);
    expect(found.find((c) => c.point === 'layer2')!.shape).toEqual([1, 32, 16, 16]);
    // Deeper names when asked: layer1.2.relu2 (the seed's exit) is then there, and layer1.2
    // with it, since both are the stage's output.
    const deeper = candidatePoints(backbone, torch.randn([2, 3, 32, 32]), { depth: 3 }).map((c) => c.point);
    expect(deeper).toContain('layer1.0.conv1');
    expect(deeper).toContain('layer1');
    expect(deeper).not.toContain('layer1.2.relu2');
    expect(() => candidatePoints(backbone, torch.randn([1, 3, 32, 32]))).toThrow('the sample needs two rows or more');
  });

  it.each(['resnet18_scripted.pt', 'resnet18_traced.pt'])('torchvision ResNet-18 (%s): the stem, each stage\'s first block and the stage', (file) => {
    const backbone = jit.load(fixture(file)).eval();
    expect(candidatePoints(backbone, torch.randn([2, 3, 64, 64])).map((c) => c.point)).toEqual([
      'conv1', 'bn1', 'relu', 'maxpool', 'layer1.0', 'layer1', 'layer2.0', 'layer2', 'layer3.0', 'layer3', 'layer4.0', 'layer4', 'avgpool',
    ]);
  });

  it('the default ramp pools to a grid of at most 4 x 4, reads the first token of a sequence', () => {
    expect(defaultRamp([1, 64, 8, 8], 10)).toBe('AdaptiveAvgPool2d(4), Flatten(), Linear(1024, 10)');
    expect(defaultRamp([1, 512, 1, 2], 10)).toBe('AdaptiveAvgPool2d((1, 2)), Flatten(), Linear(1024, 10)');
    expect(defaultRamp([1, 12, 64], 2)).toBe('Select(1, 0), Linear(64, 2)');
    expect(defaultRamp([1, 128], 10)).toBe('Linear(128, 10)');
    expect(() => defaultRamp([1, 2, 3, 4, 5], 10)).toThrow('no ramp for an output of shape [1, 2, 3, 4, 5]');
  });
});

describe('advise on the MNIST CNN', () => {
  let backbone: ReturnType<typeof jit.load>;
  let advice: Advice;
  let select: { images: Tensor; labels: Tensor };
  let before: Array<[string, Tensor]>;
  const guarantee = { epsilon: 1, delta: 0.05 };

  beforeAll(async () => {
    torch.setNumThreads(1);
    torch.manualSeed(0);
    backbone = jit.load(fixture('mnist_cnn.pt'));
    const { train, test } = loadMnist({ train: 2000, test: 1000, seed: 1 });
    trainEarlyExit(new EarlyExitModel(backbone, []), train, { epochs: 1, lossWeights: [], batchSize: 64, seed: 1 });
    backbone.train();
    before = [...backbone.namedParameters(), ...backbone.namedBuffers()].map(([name, p]) => [name, p.detach().clone()]);
    select = test;
    advice = await advise(backbone, { train, select, guarantee, runs: 10, warmup: 3 });
  }, 120000);

  it('leaves the backbone as it was: weights, batch-norm statistics, gradients wanted, mode, no hooks', () => {
    const after = [...backbone.namedParameters(), ...backbone.namedBuffers()];
    expect(after.map(([name]) => name)).toEqual(before.map(([name]) => name));
    after.forEach(([, p], i) => expect(p.sub(before[i][1]).abs().max().item()).toBe(0));
    for (const p of backbone.parameters()) expect(p.requiresGrad).toBe(true);
    expect(backbone.training).toBe(true);
    // (In eval mode from here on: a forward in train mode would move the statistics.)
    backbone.eval();
    // No exit is left attached: a model with one new exit has exactly one output before the final.
    const model = new EarlyExitModel(backbone, [['features1', advice.candidatesDef[0][1]]]);
    expect(torch.noGrad(() => model.forward(select.images.narrow(0, 0, 2)))).toHaveLength(2);
    model.eeMgr.detachExits(backbone);
  });

  it('the table: every candidate, its ramp accuracy that of the returned ramp run on its own', () => {
    expect(advice.candidates.map((c) => c.point)).toEqual(candidatePoints(backbone, select.images.narrow(0, 0, 2)).map((c) => c.point));
    expect(advice.candidatesDef.map(([point]) => point)).toEqual(advice.candidates.map((c) => c.point));
    const model = new EarlyExitModel(backbone, advice.candidatesDef).eval();
    const { outputs, labels } = collectOutputs(model, select);
    model.eeMgr.detachExits(backbone);
    advice.candidates.forEach((candidate, i) => {
      const correct = outputs[i].argmax(1).eq(labels).sum().item() as number;
      expect(candidate.rampAccuracy).toBeCloseTo((100 * correct) / labels.shape[0], 10);
      expect(candidate.ramp).toBe(defaultRamp(candidate.shape, 10));
      expect(candidate.rampLatencyMs).toBeGreaterThanOrEqual(0);
      expect(candidate.prefixLatencyMs).toBeGreaterThanOrEqual(0);
    });
    // Trained: the last stem's ramp is far above chance on digits that trained nothing.
    expect(Math.max(...advice.candidates.map((c) => c.rampAccuracy))).toBeGreaterThan(80);
    expect(advice.chosen).toEqual(advice.exitSpecs.map(([point]) => point));
    expect(advice.exitsDef.map(([point]) => point)).toEqual(advice.chosen);
  });

  it('the expected latency is what the chosen thresholds give, sample by sample, under the cost model', () => {
    const chosen = advice.chosen.map((point) => advice.candidates.findIndex((c) => c.point === point));
    if (chosen.length === 0) {
      expect(advice.expectedLatencyMs).toBe(advice.baselineLatencyMs);
      return;
    }
    const model = new EarlyExitModel(backbone, advice.exitsDef).eval();
    const { outputs, labels } = collectOutputs(model, select);
    model.eeMgr.detachExits(backbone);
    const { criterion, chosen: point } = advice.calibration;
    // Each sample leaves at the first exit whose softmax meets the threshold, written out here.
    const probabilities = outputs.map((o) => o.softmax(1).data() as Float32Array);
    const score = (p: Float32Array, j: number) => {
      const row = Array.from(p.subarray(10 * j, 10 * j + 10)).sort((a, b) => b - a);
      if (criterion === 'maxProbability') return row[0];
      if (criterion === 'margin') return row[0] - row[1];
      return -row.reduce((h, q) => h + (q > 0 ? q * Math.log(q) : 0), 0);
    };
    const meets = (s: number, t: number) => (criterion === 'entropy' ? s <= t : s >= t);
    // Leaving at the k-th exit: the network to it, its ramp and every earlier ramp.
    const prefix = chosen.map((i) => advice.candidates[i].prefixLatencyMs);
    const ramps = chosen.map((i) => advice.candidates[i].rampLatencyMs);
    let total = 0;
    for (let j = 0; j < labels.shape[0]; j++) {
      let k = chosen.findIndex((_, e) => point.thresholds[e] !== null && meets(score(probabilities[e], j), point.thresholds[e]!));
      if (k < 0) k = chosen.length;
      const passed = ramps.slice(0, k === chosen.length ? k : k + 1).reduce((a, b) => a + b, 0);
      total += (k === chosen.length ? advice.baselineLatencyMs : prefix[k]) + passed;
    }
    expect(advice.expectedLatencyMs).toBeCloseTo(total / labels.shape[0], 6);
    expect(advice.saving).toBeCloseTo(1 - advice.expectedLatencyMs / advice.baselineLatencyMs, 12);
    expect(advice.calibration.guarantee).toMatchObject({ ...guarantee, certified: true });
    expect(advice.calibration.guarantee!.bound).toBeLessThanOrEqual(guarantee.epsilon);
  });

  it('greedy addition and removal against exhaustive search over every set of up to three exits', () => {
    const model = new EarlyExitModel(backbone, advice.candidatesDef).eval();
    const heldOut: HeldOutOutputs = collectOutputs(model, select);
    model.eeMgr.detachExits(backbone);
    const costs: CandidateCosts = {
      stopMs: advice.candidates.map((c) => c.prefixLatencyMs + c.rampLatencyMs),
      rampMs: advice.candidates.map((c) => c.rampLatencyMs),
      baselineMs: advice.baselineLatencyMs,
    };
    // What advise chose is what chooseExits gives on the same outputs and costs.
    const again = chooseExits(heldOut, costs, { guarantee });
    expect(again.exits.map((i) => advice.candidates[i].point)).toEqual(advice.chosen);
    expect(again.expectedLatencyMs).toBeCloseTo(advice.expectedLatencyMs, 12);
    // The cost model: leaving at the second of two exits pays for the first one's ramp.
    const paid = [costs.stopMs[1], costs.stopMs[4] + costs.rampMs[1], costs.baselineMs + costs.rampMs[1] + costs.rampMs[4]];
    expect(costsOf([1, 4], costs)).toHaveLength(3);
    costsOf([1, 4], costs).forEach((cost, i) => expect(cost).toBeCloseTo(paid[i], 12));
    // Every exit advise kept saves at least 1% of the network's latency: without it, more is spent.
    for (const point of again.exits) {
      const without = calibrateSet(heldOut, again.exits.filter((e) => e !== point), costs, again.calibration.criterion as 'entropy', { guarantee });
      expect(without.expectedLatencyMs - again.expectedLatencyMs).toBeGreaterThanOrEqual(0.01 * costs.baselineMs);
    }
    for (const criterion of ['entropy', 'maxProbability', 'margin'] as const) {
      // The search itself, every gain taken.
      const greedy = chooseExits(heldOut, costs, { guarantee, criteria: [criterion], maxExits: 3, minGain: 0 });
      let best = calibrateSet(heldOut, [], costs, criterion, { guarantee }).expectedLatencyMs;
      const n = costs.stopMs.length;
      for (let a = 0; a < n; a++) {
        best = Math.min(best, calibrateSet(heldOut, [a], costs, criterion, { guarantee }).expectedLatencyMs);
        for (let b = a + 1; b < n; b++) {
          best = Math.min(best, calibrateSet(heldOut, [a, b], costs, criterion, { guarantee }).expectedLatencyMs);
          for (let c = b + 1; c < n; c++) best = Math.min(best, calibrateSet(heldOut, [a, b, c], costs, criterion, { guarantee }).expectedLatencyMs);
        }
      }
      expect(greedy.expectedLatencyMs).toBeGreaterThanOrEqual(best - 1e-12);
      // Within 2% of the best set's expected latency.
      expect(greedy.expectedLatencyMs).toBeLessThanOrEqual(best * 1.02);
    }
  });

  it('refuses what it cannot do, saying why', async () => {
    const data = { images: select.images.narrow(0, 0, 64), labels: select.labels.narrow(0, 0, 64) };
    await expect(advise(backbone, { train: data, select: data, points: ['features9'] })).rejects.toThrow("'features9'");
    await expect(advise(backbone, { train: data, select: data, guarantee, maxAccuracyDrop: 1 })).rejects.toThrow('give either guarantee or maxAccuracyDrop, not both');
    expect(() => chooseExits({ outputs: [select.labels], labels: select.labels }, { stopMs: [1], rampMs: [], baselineMs: 1 }))
      .toThrow('0 candidates but costs for 1 stops and 0 ramps');
  });
});

describe('torch-early-exit advise', () => {
  it('--help explains the method', () => {
    const result = spawnSync(process.execPath, [CLI, 'advise', '--help'], { encoding: 'utf8' });
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('Usage: torch-early-exit advise MODEL');
    expect(result.stdout).toContain('Learn-then-Test');
    expect(result.stdout).toContain('frozen');
  });

  it('advises on a model file: the table, the chosen exits as --exit flags, advice.json and advice.svg', () => {
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-advise-'));
    const backbone = jit.load(fixture('mnist_cnn.pt'));
    torch.manualSeed(2);
    const { train } = loadMnist({ train: 1500, test: 10, seed: 2 });
    trainEarlyExit(new EarlyExitModel(backbone, []), train, { epochs: 1, lossWeights: [], batchSize: 64, seed: 2 });
    const file = path.join(folder, 'cnn.pt');
    backbone.save(file);
    const out = path.join(folder, 'out');
    const result = spawnSync(process.execPath, [CLI, 'advise', file, '--data', 'mnist', '--train', '1500', '--held-out', '1000',
      '--epochs', '1', '--max-drop', '1', '--out', out], { encoding: 'utf8', timeout: 170000 });
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/point\s+output\s+prefix\s+ramp\s+ramp accuracy\s+leaving\s+saving/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'advice.json'), 'utf8'));
    expect(json.candidates.map((c: { point: string }) => c.point)).toEqual(candidatePoints(backbone, train.images.narrow(0, 0, 2)).map((c) => c.point));
    expect(json.calibration.guarantee).toMatchObject({ epsilon: 1, delta: 0.05 });
    for (const [point, spec] of json.exitSpecs as Array<[string, string]>) expect(result.stdout).toContain(`--exit '${point}=${spec}'`);
    const svg = fs.readFileSync(path.join(out, 'advice.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect((svg.match(/class="candidate"/g) ?? []).length).toBe(json.candidates.length);

    const bad = spawnSync(process.execPath, [CLI, 'advise', file, '--data', 'cifar'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("--data must be mnist or spam-assassin, got 'cifar'");
  }, 180000);
});
