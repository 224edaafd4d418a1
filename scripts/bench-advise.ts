/**
 * bench:advise — does `advise` beat a hand-picked exit? Issue 25's comparison, on MNIST
 * digits (3 channels, padded to 32 × 32) and the real architectures: the seed's ResNet-20,
 * torchvision's ResNet-18 and MobileNetV2, each trained here from its fixture's
 * initialisation (PyTorch's). The MNIST package's digits are cut once, before anything:
 *
 *   train        the backbone (--backbone-epochs), then every ramp on the frozen backbone
 *   select       advise chooses its exits (the hand-picked exit chose itself)
 *   calibration  both arms' thresholds, certified by Learn-then-Test at the same budget
 *   report       both arms served one sample at a time, compiled for inference, with the
 *                network without exits, the three interleaved sample by sample (the two
 *                arms taking turns to go first)
 *
 * The hand-picked exit is the one this project's tests and the seed put on each model
 * (ResNet-20 `layer1.2.relu2`, the seed's; ResNet-18 `layer2.1`; MobileNetV2 `features.6`),
 * with the same ramp as advise's, trained in the same pass: advise sees it as one more
 * candidate, so the comparison is of where the exits go, not of how ramps were trained.
 * Nothing reported was used to train, choose or calibrate.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  EarlyExitModel, EarlyExitPolicy, ExitsDef, LabelledData, Tensor, advise, candidatePoints, collectOutputs,
  jit, loadMnist, measureBaselineLatency, measureExitLatencies, policyOf, shapeDigits, torch, trainEarlyExit,
} from '../lib';
import { packageRoot } from '../lib/util/package-root';
import { DELTA, certifiedCalibration } from '../lib/cli/demo';
import { flagValue, positiveInt } from './script-args';
import { table } from './bench-stats';

const FIXTURES = path.join(packageRoot(), 'test', 'fixtures');
const MODELS: Record<string, { file: string; handPicked: string }> = {
  resnet20: { file: 'resnet20_scripted.pt', handPicked: 'layer1.2.relu2' },
  resnet18: { file: 'resnet18_scripted.pt', handPicked: 'layer2.1' },
  mobilenet_v2: { file: 'mobilenet_v2_scripted.pt', handPicked: 'features.6' },
};

function slice(data: LabelledData, start: number, count: number): LabelledData {
  return { images: data.images.narrow(0, start, count), labels: data.labels.narrow(0, start, count) };
}

interface Arm { name: string; model: EarlyExitModel; policy: EarlyExitPolicy; bound: number; predictedMs: number; exits: string[] }

/** Thresholds certified on `calibration` for `exitsDef` on a fresh copy of the backbone, compiled. */
function arm(name: string, file: string, exitsDef: ExitsDef, calibration: LabelledData, guarantee: { epsilon: number; delta: number }): Arm {
  const model = new EarlyExitModel(jit.load(file), exitsDef).eval();
  const outputs = collectOutputs(model, calibration);
  model.optimizeForInference();
  const one = calibration.images.narrow(0, 0, 1);
  const costs = measureExitLatencies(model, one, 50, 20);
  const baseline = measureBaselineLatency(model, one, 50, 20);
  // As the demos certify: each criterion, the fastest certified kept (printing nothing).
  const best = certifiedCalibration(outputs, { criterion: 'auto', maxAccuracyDrop: guarantee.epsilon }, costs, baseline, 'digits', () => undefined);
  return {
    name, model, policy: policyOf(best), bound: best.guarantee!.bound, exits: model.exitPoints,
    predictedMs: best.keepsFullNetwork ? baseline : best.chosen.expectedCost,
  };
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

async function benchModel(name: string, options: { backboneEpochs: number; rampEpochs: number; data: Record<string, LabelledData>; guarantee: { epsilon: number; delta: number } }) {
  const { file, handPicked } = MODELS[name];
  const { data, guarantee } = options;
  const backbone = jit.load(path.join(FIXTURES, file));
  torch.manualSeed(0);
  let started = Date.now();
  trainEarlyExit(new EarlyExitModel(backbone, []), data.train, { epochs: options.backboneEpochs, lossWeights: [], batchSize: 64, seed: 0 });
  const trainingSeconds = (Date.now() - started) / 1000;
  backbone.eval();
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-bench-advise-'));
  const trained = path.join(folder, 'backbone.pt');
  backbone.save(trained);

  started = Date.now();
  const points = candidatePoints(backbone, data.select.images.narrow(0, 0, 2)).map((c) => c.point);
  if (!points.includes(handPicked)) points.push(handPicked);
  const advice = await advise(backbone, { train: data.train, select: data.select, points, guarantee, epochs: options.rampEpochs });
  const adviseSeconds = (Date.now() - started) / 1000;
  const handRamp = advice.candidatesDef.find(([point]) => point === handPicked)![1];
  const advised = arm('advise', trained, advice.exitsDef, data.calibration, guarantee);
  const hand = arm(`hand-picked ${handPicked}`, trained, [[handPicked, handRamp]], data.calibration, guarantee);
  const full = jit.optimizeForInference(jit.load(trained).eval());

  // Served one at a time, the three interleaved sample by sample, each timed with its answer read back.
  const report = data.report;
  const labels = Array.from(report.labels.data() as BigInt64Array, Number);
  const arms = [advised, hand];
  const latency = arms.map(() => [] as number[]);
  const right = arms.map(() => 0);
  const fullLatency: number[] = [];
  let fullRight = 0;
  const time = (run: () => Tensor) => {
    const t0 = process.hrtime.bigint();
    const prediction = argmax(run().data() as Float32Array);
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6, prediction };
  };
  for (let i = 0; i < 30; i++) torch.tidy(() => { for (const a of arms) a.model.forwardEarlyExit(report.images.narrow(0, i, 1), a.policy); });
  for (let i = 0; i < labels.length; i++) {
    torch.tidy(() => torch.noGrad(() => {
      const x = report.images.narrow(0, i, 1);
      // The arm served right after the network without exits finds the caches full of the
      // network's weights: the two arms take turns going first.
      for (const k of i % 2 === 0 ? [0, 1] : [1, 0]) {
        const a = arms[k];
        const { ms, prediction } = time(() => a.model.forwardEarlyExit(x, a.policy).output);
        latency[k].push(ms);
        if (prediction === labels[i]) right[k]++;
      }
      const { ms, prediction } = time(() => full.forward(x) as Tensor);
      fullLatency.push(ms);
      if (prediction === labels[i]) fullRight++;
    }));
  }
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  const thirds = [0, 1, 2].map((t) => {
    const from = Math.floor((t * labels.length) / 3);
    const to = Math.floor(((t + 1) * labels.length) / 3);
    return mean(latency[0].slice(from, to)) / mean(latency[1].slice(from, to));
  });
  fs.rmSync(folder, { recursive: true, force: true });
  return {
    model: name, trainingSeconds, adviseSeconds, inferenceOptimization: advice.inferenceOptimization,
    candidates: advice.candidates.length, chosen: advice.chosen, fullAccuracy: (100 * fullRight) / labels.length,
    fullMeanMs: mean(fullLatency),
    arms: arms.map((a, k) => ({
      name: a.name, exits: a.exits, thresholds: a.policy.thresholds, criterion: a.policy.criterion, certifiedBound: a.bound,
      predictedMs: a.predictedMs, meanMs: mean(latency[k]), accuracy: (100 * right[k]) / labels.length,
      drop: (100 * (fullRight - right[k])) / labels.length,
    })),
    advisedOverHandPicked: mean(latency[0]) / mean(latency[1]),
    thirds,
    table: advice.candidates,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--help')) {
    console.log('Usage: npm run bench:advise -- [--models resnet20,resnet18,mobilenet_v2] [--backbone-epochs N] [--ramp-epochs N] ' +
      '[--max-drop P] [--out FILE.json]');
    return;
  }
  const models = (flagValue(args, '--models') ?? Object.keys(MODELS).join(',')).split(',');
  for (const m of models) if (!MODELS[m]) throw new Error(`--models: unknown model '${m}' (${Object.keys(MODELS).join(', ')})`);
  const backboneEpochs = flagValue(args, '--backbone-epochs') ? positiveInt('--backbone-epochs', flagValue(args, '--backbone-epochs')) : 3;
  const rampEpochs = flagValue(args, '--ramp-epochs') ? positiveInt('--ramp-epochs', flagValue(args, '--ramp-epochs')) : 2;
  const guarantee = { epsilon: Number(flagValue(args, '--max-drop') ?? 0.5), delta: DELTA };
  torch.setNumThreads(1);
  const { train, test } = loadMnist({ train: 6000, test: 4000, seed: 0 });
  const held = { images: shapeDigits(test.images, { channels: 3, size: 32 }), labels: test.labels };
  const data = {
    train: { images: shapeDigits(train.images, { channels: 3, size: 32 }), labels: train.labels },
    select: slice(held, 0, 1000), calibration: slice(held, 1000, 1500), report: slice(held, 2500, 1500),
  };
  console.log(`bench:advise: LibTorch ${torch.version.libtorch}, 1 thread, allocator as installed (MALLOC_CONF=${process.env.MALLOC_CONF ?? ''}, ` +
    `LD_PRELOAD=${process.env.LD_PRELOAD ?? ''}), ${os.cpus()[0]?.model ?? 'cpu'}`);
  console.log('data: mnist digits as 3 x 32 x 32; 6000 train the backbone and the ramps, 1000 choose (advise), 1500 calibrate ' +
    `(Learn-then-Test: at most ${guarantee.epsilon} points lost, probability ${1 - guarantee.delta}), 1500 are served and reported`);
  const results = [];
  for (const name of models) {
    const result = await benchModel(name, { backboneEpochs, rampEpochs, data, guarantee });
    results.push(result);
    console.log(`\n${name}: backbone trained ${backboneEpochs} epoch(s) in ${result.trainingSeconds.toFixed(0)} s, advise ${result.adviseSeconds.toFixed(0)} s ` +
      `over ${result.candidates} candidates (${result.inferenceOptimization}); network without exits ${result.fullAccuracy.toFixed(2)}%, ${result.fullMeanMs.toFixed(3)} ms`);
    console.log(table([['arm', 'exits', 'criterion', 'certified bound', 'predicted', 'served mean', 'speed-up', 'accuracy', 'drop'],
      ...result.arms.map((a) => [a.name, a.exits.join(' '), a.criterion, `${a.certifiedBound.toFixed(2)} pt`, `${a.predictedMs.toFixed(3)} ms`,
        `${a.meanMs.toFixed(3)} ms`, `${(result.fullMeanMs / a.meanMs).toFixed(2)}x`, `${a.accuracy.toFixed(2)}%`, `${a.drop.toFixed(2)} pt`])],
    [false, false, false, true, true, true, true, true, true]));
    console.log(`advise / hand-picked, mean latency on the report digits: ${result.advisedOverHandPicked.toFixed(3)} ` +
      `(per third of them: ${result.thirds.map((t) => t.toFixed(3)).join(', ')})`);
  }
  const out = flagValue(args, '--out');
  if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2) + '\n');
}

main().catch((error) => {
  console.error(`bench:advise: ${(error as Error).stack ?? error}`);
  process.exit(1);
});
