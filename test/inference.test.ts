import { EarlyExitModel, EarlyExitStats, Tensor, calibrateThresholds, exitDecisions, exitScores, jit, nn, torch } from '../lib';
import { fixture, fromRef, maxAbsDiff, medianEntropySplit, mnistTwoExits, reference, seedBranch } from './helpers';

const resnet = () => reference('resnet20_reference.json');

function seedModel(): EarlyExitModel {
  return new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]).eval();
}

describe("Distiller's validation statistics", () => {
  const cases = () => reference('distiller_stats_reference.json').cases as any[];

  it.each([0, 1, 2])('equal earlyexit_validate_loss + earlyexit_validate_stats on the same outputs (case %i)', (index) => {
    const { thresholds, batches, expected } = cases()[index];
    const stats = new EarlyExitStats(thresholds);
    for (const batch of batches) stats.add(batch.outputs.map(fromRef), fromRef(batch.target));
    const report = stats.report();
    expect(report.exitTaken).toEqual(expected.exitTaken);
    expect(stats.decisions).toEqual(expected.decisions);
    for (const key of ['percentTaken', 'top1', 'top5', 'lossMeans'] as const) {
      report[key].forEach((value, i) => expect(value).toBeCloseTo(expected[key][i], 4));
    }
    expect(report.totalTop1).toBeCloseTo(expected.totalTop1, 4);
    expect(report.totalTop5).toBeCloseTo(expected.totalTop5, 4);
    expect(report.samples).toBe(39);
  });

  it('refuses to report before any sample', () => {
    expect(() => new EarlyExitStats([0.5]).report()).toThrow(/no samples were added/);
  });
});

describe('exit criteria', () => {
  const logits = torch.tensor([[2, 0, 0], [1, 1, 1], [0, 3, 2.5]], { dtype: 'float32' });
  const probs = (logits.softmax(1).toArray() as number[][]);

  it('entropy, max probability and margin per sample, as their formulas', () => {
    const [entropy] = exitScores([logits], 'entropy');
    const [maxP] = exitScores([logits], 'maxProbability');
    const [margin] = exitScores([logits], 'margin');
    probs.forEach((row, j) => {
      expect(entropy[j]).toBeCloseTo(-row.reduce((s, p) => s + p * Math.log(p), 0), 5);
      const sorted = [...row].sort((a, b) => b - a);
      expect(maxP[j]).toBeCloseTo(sorted[0], 6);
      expect(margin[j]).toBeCloseTo(sorted[0] - sorted[1], 6);
    });
    expect(entropy[1]).toBeCloseTo(Math.log(3), 5);
  });

  it('patience counts consecutive agreeing predictions (PABEE)', () => {
    const a = torch.tensor([[1, 0], [0, 1], [1, 0]], { dtype: 'float32' });
    const b = torch.tensor([[1, 0], [1, 0], [1, 0]], { dtype: 'float32' });
    const c = torch.tensor([[1, 0], [1, 0], [0, 1]], { dtype: 'float32' });
    expect(exitScores([a, b, c], 'patience')).toEqual([[1, 1, 1], [2, 1, 2], [3, 2, 1]]);
  });

  it('decisions take the first exit that meets its threshold, else the final', () => {
    const scores = [[0.1, 0.9, 0.5], [0.2, 0.3, 0.9], [0, 0, 0]];
    expect(exitDecisions(scores, 'entropy', [0.4, 0.4])).toEqual([0, 1, 2]);
    expect(exitDecisions(scores, 'maxProbability', [0.8, 0.85])).toEqual([2, 0, 1]);
    expect(() => exitDecisions(scores, 'entropy', [0.4])).toThrow(/one threshold per exit: 2 exit\(s\), 1 threshold\(s\)/);
    expect(() => exitScores([logits], 'nope' as never)).toThrow(/unknown exit criterion 'nope'/);
  });
});

describe('forwardEarlyExit: exits that really stop', () => {
  it('stops at the exit: nothing after it runs, and the output is the exit output exactly', () => {
    const model = seedModel();
    const x = fromRef(resnet().input);
    const [exitOutput] = torch.noGrad(() => model.forward(x));
    const fired: string[] = [];
    // layer1.2 itself never returns: the forward stops inside it, at its relu2.
    for (const name of ['layer1.1', 'layer1.2.bn2', 'layer1.2', 'layer2', 'layer3.2.relu2', 'fc']) {
      model.backbone.getModule(name).registerForwardHook(() => { fired.push(name); });
    }
    const result = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0] });
    expect(result.exit).toBe(0);
    expect(fired).toEqual(['layer1.1', 'layer1.2.bn2']);
    expect(maxAbsDiff(result.output, exitOutput)).toBe(0);
    expect(maxAbsDiff(result.output, resnet().exit.exit_output)).toBeLessThanOrEqual(1e-5);
    expect(result.output.requiresGrad).toBe(false);
  });

  it('continues to the final output when any sample of the batch is not confident', () => {
    const model = seedModel();
    const x = fromRef(resnet().input);
    const [entropy] = exitScores(torch.noGrad(() => model.forward(x)), 'entropy');
    const between = (Math.min(...entropy) + Math.max(...entropy)) / 2;
    const result = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [between] });
    expect(result.exit).toBe(1);
    expect(maxAbsDiff(result.output, resnet().output)).toBeLessThanOrEqual(1e-5);
    const stopped = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [Math.max(...entropy) + 1e-3] });
    expect(stopped.exit).toBe(0);
    expect(model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [null] }).exit).toBe(1);
  });

  it('decides every criterion per sample as exitScores does, with thresholds between the scores and on them', () => {
    // The native decision is made in plain C++ where a score is clear of its threshold and by
    // LibTorch's operators where it is within 1e-4; both must give exitDecisions' answer.
    const model = mnistTwoExits();
    torch.manualSeed(6);
    const x = torch.randn([32, 1, 28, 28]);
    const outputs = torch.noGrad(() => model.forward(x));
    for (const criterion of ['entropy', 'maxProbability', 'margin'] as const) {
      const scores = exitScores(outputs, criterion);
      const sorted = scores.slice(0, -1).map((exit) => [...exit].sort((a, b) => a - b));
      const between = sorted.map((exit) => (exit[10] + exit[11]) / 2);
      const on = sorted.map((exit) => exit[16]);
      // On a score exactly, only the model that gave the scores: the compiled one rounds differently.
      for (const [thresholds, modes] of [[between, [false, true]], [on, [false]]] as const) {
        const expected = exitDecisions(scores, criterion, [...thresholds]);
        expect(new Set(expected).size).toBe(3);
        for (const compiled of modes) {
          if (compiled) model.optimizeForInference();
          const result = model.forwardEarlyExit(x, { criterion, thresholds: [...thresholds], perSample: true });
          expect(result.exits).toEqual(expected);
          model.leaveInferenceMode();
        }
      }
    }
    // A batch where every sample meets the first exit's threshold stops there.
    const [first] = exitScores(outputs, 'maxProbability');
    expect(model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [Math.min(...first) - 1e-3, null] }).exit).toBe(0);
    expect(model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [Math.min(...first) + 1e-3, null] }).exit).toBe(2);
  });

  it('leaves the model clean after a stop: forward, exits outputs and hooks behave', () => {
    const model = seedModel();
    const x = fromRef(resnet().input);
    model.forwardEarlyExit(x, { criterion: 'margin', thresholds: [0] });
    let fcCalls = 0;
    const handle = model.backbone.getModule('fc').registerForwardHook(() => { fcCalls++; });
    const [exit0, final] = model.forward(x);
    handle.remove();
    expect(fcCalls).toBe(1);
    expect(maxAbsDiff(final, resnet().output)).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff(exit0, resnet().exit.exit_output)).toBeLessThanOrEqual(1e-5);
    for (let i = 0; i < 3; i++) expect(model.forwardEarlyExit(x, { criterion: 'margin', thresholds: [0] }).exit).toBe(0);
  });

  it('works on a worker thread, and keeps every exit output of the call', async () => {
    const model = seedModel();
    const x = fromRef(resnet().input);
    const [stopped, full] = await Promise.all([
      model.forwardEarlyExitAsync(x, { criterion: 'maxProbability', thresholds: [0] }),
      model.forwardEarlyExitAsync(x, { criterion: 'maxProbability', thresholds: [1.5] }),
    ]);
    expect(stopped.exit).toBe(0);
    expect(maxAbsDiff(stopped.output, resnet().exit.exit_output)).toBeLessThanOrEqual(1e-5);
    expect(full.exit).toBe(1);
    expect(maxAbsDiff(full.output, resnet().output)).toBeLessThanOrEqual(1e-5);
  });

  it('stops at the right one of several exits, with patience too', () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [
      ['layer1', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))],
      ['layer2', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))],
    ]).eval();
    const x = fromRef(resnet().input);
    expect(model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [null, 0] }).exit).toBe(1);
    expect(model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [1.5, 1.5] }).exit).toBe(2);
    const outputs = torch.noGrad(() => model.forward(x));
    const patience = exitScores(outputs, 'patience');
    const expectedExit = exitDecisions(patience, 'patience', [2, 2]).reduce((a, b) => Math.max(a, b), 0);
    expect(model.forwardEarlyExit(x, { criterion: 'patience', thresholds: [2, 2] }).exit).toBe(expectedExit);
    expect(model.forwardEarlyExit(x, { criterion: 'patience', thresholds: [1, 1] }).exit).toBe(0);
    expect(() => model.forwardEarlyExit(x, { criterion: 'patience', thresholds: [null, 2] })).toThrow(/give every exit a threshold/);
    expect(() => model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [1] })).toThrow(/one threshold per exit: 2 exit\(s\), 1 threshold\(s\)/);
    expect(() => model.forwardEarlyExit(x, { criterion: 'loss' as never, thresholds: [1, 1] })).toThrow(/unknown stop rule 'loss'/);
  });
});

describe('per-sample exits inside a batch', () => {
  it('finds the block boundaries where samples can leave, nested ones too, and refuses the rest', () => {
    const resnet = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [
      ['layer1.2.relu2', nn.Identity()], ['layer1', nn.Identity()], ['layer1.2.relu1', nn.Identity()], ['fc', nn.Identity()]]);
    // relu1 is inside a residual block: the block's input is read again after it.
    expect(resnet.exitsPerSample).toEqual([true, true, false, true]);
    const traced = jit.load(fixture('resnet20_traced.pt'));
    expect(['layer1', 'layer2.0', 'layer2.0.conv1'].map((name) => traced.getModule(name).isBatchBoundary)).toEqual([true, true, false]);
    const containers = jit.load(fixture('containers_scripted.pt'));
    // act is called twice; left is a plain link of the chain; heads.b still needs what heads.a read.
    expect(['act', 'left', 'blocks.0', 'heads.a'].map((name) => containers.getModule(name).isBatchBoundary)).toEqual([false, true, true, false]);
    expect(['act', 'left', 'heads'].map((name) => containers.getModule(name).callsPerForward)).toEqual([2, 1, 0]);
  });

  it('says the same of every module after a backward pass, and an exit added then compiles and stops', () => {
    // Once a forward with gradients has run, TorchScript's executor replaces the blocks'
    // cached optimized graphs, in which nested modules' calls were no longer found (0 calls,
    // no boundary): an exit added to a model trained in this process was refused.
    const describe = (model: ReturnType<typeof jit.load>) => model.namedModules().map(([name, m]) => `${name}:${m.callsPerForward}:${m.isBatchBoundary}`);
    const backbone = jit.load(fixture('resnet20_scripted.pt'));
    // (Nothing asks the trained one before its backward: the executor must be the first to build those graphs.)
    const out = backbone.forward(torch.randn([4, 3, 32, 32])) as Tensor;
    out.sum().backward();
    expect(describe(backbone)).toEqual(describe(jit.load(fixture('resnet20_scripted.pt'))));
    const model = new EarlyExitModel(backbone.eval(), [['layer1.2.relu2', seedBranch()]]).eval();
    expect(model.exitCalls).toEqual([1]);
    expect(model.exitsPerSample).toEqual([true]);
    model.optimizeForInference({ optimize: false });
    const x = torch.randn([3, 3, 32, 32]);
    const result = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0], perSample: true });
    expect(result.exits).toEqual([0, 0, 0]);
  });

  it('each sample leaves at its first confident exit; the rest go on with a smaller batch; rows come back in input order', async () => {
    const model = mnistTwoExits();
    const { x, outputs, thresholds, expected } = medianEntropySplit(model);
    const classifierBatches: number[] = [];
    const handle = model.backbone.getModule('classifier').registerForwardHook((_m, _i, output) => {
      classifierBatches.push((output as Tensor).shape[0]);
    });
    const result = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds, perSample: true });
    handle.remove();
    expect(result.exits).toEqual(expected);
    expect(result.exit).toBe(2);
    expect(classifierBatches).toEqual([expected.filter((e) => e === 2).length]);
    expected.forEach((exit, j) => expect(maxAbsDiff(result.output.select(0, j), outputs[exit].select(0, j))).toBeLessThanOrEqual(1e-5));
    const asyncResult = await model.forwardEarlyExitAsync(x, { criterion: 'entropy', thresholds, perSample: true });
    expect(asyncResult.exits).toEqual(expected);
    expect(maxAbsDiff(asyncResult.output, result.output)).toBe(0);
    // The model is whole again afterwards.
    expect(maxAbsDiff(torch.noGrad(() => model.forward(x))[2], outputs[2])).toBe(0);
  });

  it('when the rest of the batch all meet a later exit, the forward stops there', () => {
    const model = mnistTwoExits();
    const x = torch.randn([8, 1, 28, 28]);
    const scores = exitScores(torch.noGrad(() => model.forward(x)), 'maxProbability');
    const first = [...scores[0]].sort((a, b) => b - a)[2];
    const result = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [first, 0], perSample: true });
    expect(result.exits).toEqual(scores[0].map((s) => (s >= first ? 0 : 1)));
  });

  it('lets samples leave at a boundary nested in blocks, and refuses per-sample exits elsewhere, naming the exit', () => {
    const model = seedModel();
    const x = fromRef(resnet().input);
    const [maxP] = exitScores(torch.noGrad(() => model.forward(x)), 'maxProbability');
    const between = (Math.min(...maxP) + Math.max(...maxP)) / 2;
    const result = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [between], perSample: true });
    expect(model.exitsPerSample).toEqual([true]);
    const expected = maxP.map((p) => (p >= between ? 0 : 1));
    expect(new Set(expected).size).toBe(2);
    expect(result.exits).toEqual(expected);
    const rows = [resnet().exit.exit_output, resnet().exit.final_output].map(fromRef);
    expected.forEach((exit, j) => expect(maxAbsDiff(result.output.select(0, j), rows[exit].select(0, j))).toBeLessThanOrEqual(1e-5));
    const inside = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [
      ['layer1.2.relu1', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))]]).eval();
    expect(() => inside.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0.5], perSample: true }))
      .toThrow(/samples cannot leave the batch alone at exit 'layer1\.2\.relu1': a batch-sized tensor made before it/);
    // Whole-batch exits are still allowed there.
    expect(inside.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0] }).exit).toBe(0);
  });
});

describe('calibration', () => {
  // Exit 0 is right on confident samples only; the final output is always right.
  function heldOut(): { outputs: Tensor[]; labels: Tensor } {
    const labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    const exit = torch.tensor([
      [5, 0], [0, 5], [4, 0], [0, 4], [3, 0], [0.2, 0], [0, 0.1], [0.1, 0], [0, 0.3], [0.3, 0],
    ], { dtype: 'float32' });
    const final = torch.tensor(Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? [3, 0] : [0, 3])), { dtype: 'float32' });
    return { outputs: [exit, final], labels };
  }

  it('picks the cheapest thresholds within the accuracy drop, and returns the trade-off curve', () => {
    const strict = calibrateThresholds(heldOut(), { criterion: 'maxProbability', exitCosts: [1, 4], maxAccuracyDrop: 0 });
    expect(strict.finalAccuracy).toBe(100);
    expect(strict.chosen.accuracy).toBe(100);
    // The five confident samples (and the one right by luck at 0.55) can leave early.
    expect(strict.chosen.exitFractions[0]).toBeGreaterThanOrEqual(0.5);
    expect(strict.chosen.expectedCost).toBeCloseTo(strict.chosen.exitFractions[0] * 1 + strict.chosen.exitFractions[1] * 4, 10);
    expect(strict.chosen.speedup).toBeCloseTo(4 / strict.chosen.expectedCost, 10);
    const loose = calibrateThresholds(heldOut(), { criterion: 'maxProbability', exitCosts: [1, 4], maxAccuracyDrop: 30 });
    expect(loose.chosen.accuracy).toBeGreaterThanOrEqual(70);
    expect(loose.chosen.expectedCost).toBeLessThan(strict.chosen.expectedCost);
    const curve = loose.curve;
    for (let i = 1; i < curve.length; i++) {
      expect(curve[i].expectedCost).toBeGreaterThanOrEqual(curve[i - 1].expectedCost);
      expect(curve[i].accuracy).toBeGreaterThan(curve[i - 1].accuracy);
    }
    expect(curve[curve.length - 1].accuracy).toBe(100);
  });

  it('measures speed-up against the network without exits, and keeps it when exits cannot beat it', () => {
    // The full forward through the exit costs 4.5, the network without exits 4: the branches' cost counts.
    const honest = calibrateThresholds(heldOut(), { criterion: 'maxProbability', exitCosts: [1, 4.5], baselineCost: 4, maxAccuracyDrop: 0 });
    expect(honest.keepsFullNetwork).toBe(false);
    expect(honest.chosen.speedup).toBeCloseTo(4 / honest.chosen.expectedCost, 10);
    // An exit as dear as the whole network gains nothing: every exit is turned off.
    const useless = calibrateThresholds(heldOut(), { criterion: 'maxProbability', exitCosts: [4, 4.5], baselineCost: 4, maxAccuracyDrop: 30 });
    expect(useless.keepsFullNetwork).toBe(true);
    expect(useless.chosen.thresholds).toEqual([null]);
    expect(useless.chosen.exitFractions).toEqual([0, 1]);
  });

  it('with a confidence, keeps a margin for new data: a more careful point, whose bound stays within the drop', () => {
    const loose = calibrateThresholds(heldOut(), { criterion: 'maxProbability', exitCosts: [1, 4], maxAccuracyDrop: 30 });
    expect(loose.chosen.accuracyBound).toBe(loose.chosen.accuracy);
    const careful = calibrateThresholds(heldOut(), { criterion: 'maxProbability', exitCosts: [1, 4], maxAccuracyDrop: 30, confidence: 0.95 });
    expect(careful.chosen.accuracyBound).toBeGreaterThanOrEqual(70);
    expect(careful.chosen.expectedCost).toBeGreaterThan(loose.chosen.expectedCost);
    // The margin is z·sqrt(d)/n: d samples right at their exit where the final is wrong, or the reverse.
    const d = Math.round(((careful.chosen.accuracy - careful.chosen.accuracyBound) * 10 / (100 * 1.6448536)) ** 2);
    expect(careful.chosen.accuracyBound).toBeCloseTo(careful.chosen.accuracy - (1.6448536 * 100 * Math.sqrt(d)) / 10, 5);
    expect(() => calibrateThresholds(heldOut(), { criterion: 'entropy', exitCosts: [1, 4], confidence: 1 })).toThrow(/confidence must be between 0.5 and 1/);
  });

  it('refuses costs that do not match the outputs', () => {
    expect(() => calibrateThresholds(heldOut(), { criterion: 'entropy', exitCosts: [1] })).toThrow(/a cost per exit and one for the full forward/);
  });
});
