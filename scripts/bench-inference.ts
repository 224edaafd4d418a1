/**
 * Early-exit inference benchmark, batch 1, one intra-op thread, ratios in one run:
 *  - ResNet-20 (CIFAR, the seed's exit at layer1.2.relu2): full forward of the plain model
 *    and the forward stopped at the exit. (No CIFAR data here: no accuracy for it.)
 *  - The MNIST CNN trained with its exit on the mnist package's digits: full forward,
 *    forward stopped at the exit, and the mean latency over the 2,000 held-out digits at
 *    thresholds calibrated for at most 0.5 points of accuracy lost, with its accuracy.
 *
 *  - The two transformers (scripts/bench-transformers.ts): the text encoder on the
 *    SpamAssassin e-mails and the ViT on the digits, exits after the first three layers,
 *    one at a time and in batches of 32.
 *
 *   node dist/scripts/bench-inference.js [--json out.json] [--epochs 4] [--only cnn|transformers]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  EarlyExitModel, ScriptModule, Tensor, calibrateThresholds, collectOutputs, exitScores, jit, loadMnist, measureExitLatencies, nn,
  policyOf, serveOneAtATime, torch, trainEarlyExit,
} from '../lib';
import { packageRoot } from '../lib/util/package-root';
import { Side, describeEnvironment, ratioTable, runPairs, serveSide } from './bench-harness';
import { benchTransformers } from './bench-transformers';

const ROOT = packageRoot();

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function time(fn: () => void): number {
  const started = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - started) / 1e6;
}

/** Median ms of the plain model, and of the early-exit model stopped at each exit and run to the end. */
function stoppedAt(model: EarlyExitModel, plain: ScriptModule, input: Tensor, rounds: number) {
  const exits = measureExitLatencies(model, input, rounds, 20);
  const full: number[] = [];
  torch.noGrad(() => {
    for (let i = 0; i < 20 + rounds; i++) {
      const ms = time(() => (plain.forward(input) as Tensor).dispose());
      if (i >= 20) full.push(ms);
    }
  });
  return { plainMs: median(full), stoppedMs: exits.slice(0, -1), throughAllExitsMs: exits[exits.length - 1] };
}

/**
 * Per-sample exits in a batch of 64 on torchvision models, compiled for inference, against
 * the network without exits compiled alike. No ImageNet here: the inputs are seeded noise,
 * and the threshold is the median entropy of the exit on a separate calibration batch, so
 * about half the samples leave; what is measured is the compute that leaving saves.
 */
function torchvisionSide(options: Record<string, unknown>): Side {
  const { file, point, channels, path: which } = options as { file: string; point: string; channels: number; path: 'full' | 'perSample' };
  torch.setNumThreads(1);
  const fixture = path.join(ROOT, 'test', 'fixtures', file);
  if (!fs.existsSync(fixture)) throw new Error(`${fixture} is missing: run npm run fixtures first`);
  torch.manualSeed(0);
  const model = new EarlyExitModel(jit.load(fixture), [[point, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))]]).eval();
  torch.manualSeed(1);
  const calibrationBatch = torch.randn([64, 3, 64, 64]);
  const [scores] = exitScores(torch.noGrad(() => model.forward(calibrationBatch)), 'entropy');
  const threshold = [...scores].sort((a, b) => a - b)[32];
  model.optimizeForInference();
  const full = jit.optimizeForInference(jit.load(fixture).eval());
  torch.manualSeed(2);
  const batch = torch.randn([64, 3, 64, 64]);
  const policy = { criterion: 'entropy' as const, thresholds: [threshold], perSample: true };
  const left = model.forwardEarlyExit(batch, policy).exits.filter((e) => e === 0).length;
  return {
    step: () => torch.noGrad(() => torch.tidy(() => { (which === 'full' ? full.forward(batch) as Tensor : model.forwardEarlyExit(batch, policy).output).data(); })),
    describe: which === 'full' ? 'network without exits' : `${left} of 64 samples left at ${point}`,
  };
}

serveSide({ torchvision: torchvisionSide });

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const jsonIndex = args.indexOf('--json');
  const epochsIndex = args.indexOf('--epochs');
  const epochs = epochsIndex >= 0 ? Number(args[epochsIndex + 1]) : 4;
  const onlyIndex = args.indexOf('--only');
  const only = onlyIndex >= 0 ? args[onlyIndex + 1] : 'all';
  if (!['all', 'cnn', 'transformers'].includes(only)) throw new Error(`bench-inference: --only takes cnn or transformers, got '${only}'`);
  torch.setNumThreads(1);
  torch.manualSeed(0);
  console.log(`bench-inference: LibTorch ${torch.version.libtorch}, 1 intra-op thread, ${os.cpus()[0].model}`);
  if (only === 'transformers') {
    const transformers = benchTransformers();
    if (jsonIndex >= 0) fs.writeFileSync(args[jsonIndex + 1], JSON.stringify({ transformers }, null, 2) + '\n');
    return;
  }

  const resnetFile = path.join(ROOT, 'test', 'fixtures', 'resnet20_scripted.pt');
  const resnet = new EarlyExitModel(jit.load(resnetFile), [
    ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]).eval();
  const r = stoppedAt(resnet, jit.load(resnetFile).eval(), torch.randn([1, 3, 32, 32]), 200);

  const { train, test } = loadMnist({ seed: 0 });
  const mnist = new EarlyExitModel(jit.load(path.join(ROOT, 'models', 'mnist_cnn.pt')), [
    ['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))]]);
  trainEarlyExit(mnist, train, { epochs, lossWeights: [0.3], seed: 0 });
  mnist.eval();
  const plain = mnist.plainBackbone();
  const m = stoppedAt(mnist, plain, test.images.narrow(0, 0, 1), 500);
  // Thresholds are chosen on the first half of the held-out digits; everything reported is
  // measured on the second half, which chose nothing.
  const half = Math.floor(test.images.shape[0] / 2);
  const calibrationSet = { images: test.images.narrow(0, 0, half), labels: test.labels.narrow(0, 0, half) };
  const report = { images: test.images.narrow(0, half, test.images.shape[0] - half), labels: test.labels.narrow(0, half, test.labels.shape[0] - half) };
  const calibration = calibrateThresholds(collectOutputs(mnist, calibrationSet), {
    criterion: 'entropy', exitCosts: [...m.stoppedMs, m.throughAllExitsMs], baselineCost: m.plainMs, maxAccuracyDrop: 0.5,
  });
  const policy = policyOf(calibration);
  const labels = Array.from(report.labels.data() as BigInt64Array, Number);
  // The first pass warms both paths up; the second is measured.
  await serveOneAtATime(mnist, plain, report.images, labels, policy);
  const served = (await serveOneAtATime(mnist, plain, report.images, labels, policy))!;
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

  // Batches of 64: whole-batch exits rarely fire (every sample must be confident); per-sample
  // exits let the confident ones leave and run the rest on a smaller batch.
  const batch = 64;
  const batched = { full: [] as number[], wholeBatch: [] as number[], perSample: [] as number[] };
  const batchedCorrect = { full: 0, wholeBatch: 0, perSample: 0 };
  const count = Math.floor(labels.length / batch) * batch;
  for (let pass = 0; pass < 2; pass++) {
    for (let start = 0; start < count; start += batch) {
      torch.tidy(() => torch.noGrad(() => {
        const x = report.images.narrow(0, start, batch);
        const truth = report.labels.narrow(0, start, batch);
        const runs: Array<[keyof typeof batched, () => Tensor]> = [
          ['full', () => plain.forward(x) as Tensor],
          ['wholeBatch', () => mnist.forwardEarlyExit(x, policy).output],
          ['perSample', () => mnist.forwardEarlyExit(x, { ...policy, perSample: true }).output],
        ];
        for (const [name, run] of runs) {
          let output: Tensor | undefined;
          const ms = time(() => { output = run(); });
          if (pass === 1) {
            batched[name].push(ms);
            batchedCorrect[name] += output!.argmax(1).eq(truth).sum().item() as number;
          }
        }
      }));
    }
  }
  const batchedResults = Object.fromEntries((Object.keys(batched) as Array<keyof typeof batched>).map((name) => [name, {
    meanMsPerBatch: mean(batched[name]), accuracy: (100 * batchedCorrect[name]) / count,
  }]));
  const results = {
    resnet20: { fullMs: r.plainMs, stoppedAtExitMs: r.stoppedMs[0], throughExitToEndMs: r.throughAllExitsMs, speedupStopped: r.plainMs / r.stoppedMs[0] },
    mnist: {
      fullMs: m.plainMs, stoppedAtExitMs: m.stoppedMs[0], throughExitToEndMs: m.throughAllExitsMs,
      criterion: calibration.criterion, thresholds: calibration.chosen.thresholds, exitFraction: calibration.chosen.exitFractions[0],
      heldOutMeanMs: served.meanLatencyMs, heldOutFullMeanMs: served.fullMeanLatencyMs, speedup: served.speedup,
      accuracy: served.accuracy, fullAccuracy: served.fullAccuracy,
      batch64: batchedResults,
    },
  };
  const row = (cells: string[]) => console.log(cells[0].padEnd(44) + cells.slice(1).map((c) => ' ' + c.padStart(11)).join(''));
  row(['', 'ms', 'vs full']);
  row(['ResNet-20 full forward (plain model)', r.plainMs.toFixed(3), '1.00x']);
  row(['ResNet-20 stopped at layer1.2.relu2', r.stoppedMs[0].toFixed(3), `${(r.plainMs / r.stoppedMs[0]).toFixed(2)}x`]);
  row(['ResNet-20 with exit, not stopping', r.throughAllExitsMs.toFixed(3), `${(r.plainMs / r.throughAllExitsMs).toFixed(2)}x`]);
  row(['MNIST CNN full forward (plain model)', m.plainMs.toFixed(3), '1.00x']);
  row(['MNIST CNN stopped at features1', m.stoppedMs[0].toFixed(3), `${(m.plainMs / m.stoppedMs[0]).toFixed(2)}x`]);
  row(['MNIST CNN with exit, not stopping', m.throughAllExitsMs.toFixed(3), `${(m.plainMs / m.throughAllExitsMs).toFixed(2)}x`]);
  row([`MNIST held-out mean, ${calibration.criterion} <= ${(calibration.chosen.thresholds[0] ?? NaN).toFixed(4)}`, served.meanLatencyMs.toFixed(3),
    `${results.mnist.speedup.toFixed(2)}x`]);
  row(['MNIST held-out mean, full network', served.fullMeanLatencyMs.toFixed(3), '1.00x']);
  console.log(`MNIST accuracy: early exits ${results.mnist.accuracy.toFixed(2)}% (${(100 * results.mnist.exitFraction).toFixed(1)}% left at the exit), ` +
    `full network ${results.mnist.fullAccuracy.toFixed(2)}%: ${(results.mnist.fullAccuracy - results.mnist.accuracy).toFixed(2)} points lost`);
  for (const [name, label] of [['full', 'full network'], ['wholeBatch', 'early exits, whole batch'], ['perSample', 'early exits, per sample']] as const) {
    const r = batchedResults[name];
    row([`MNIST batch ${batch}, ${label}`, r.meanMsPerBatch.toFixed(3),
      `${(batchedResults.full.meanMsPerBatch / r.meanMsPerBatch).toFixed(2)}x  ${r.accuracy.toFixed(2)}%`]);
  }
  console.log(`goal: >= 2x lower mean latency at <= 0.5 points: ${results.mnist.speedup >= 2 && results.mnist.fullAccuracy - results.mnist.accuracy <= 0.5 ? 'met' : 'NOT met'}`);

  const environment = { threads: 1, allocator: 'as-installed' as const };
  console.log(`\nper-sample exits, batch 64, compiled for inference (${describeEnvironment(environment)}):`);
  const side = (file: string, point: string, channels: number, which: string) => ({ factory: 'torchvision', options: { file, point, channels, path: which } });
  const torchvision = await runPairs(__filename, [
    ['resnet18_scripted.pt', 'layer2.1', 128], ['mobilenet_v2_traced.pt', 'features.6', 32],
  ].map(([file, point, channels]) => ({
    name: `${file} per sample at ${point}`, a: side(file as string, point as string, channels as number, 'perSample'),
    b: side(file as string, point as string, channels as number, 'full'), steps: 20, warmup: 3,
  })), environment);
  console.log(ratioTable(torchvision, 'per-sample exits', 'no exits'));
  for (const r of torchvision) console.log(`  ${r.name}: ${r.aDescribe}; speed-up ${(1 / median(r.ratios)).toFixed(2)}x`);
  const transformers = only === 'all' ? (console.log('\ntransformers, exits after the first three layers:'), benchTransformers()) : [];
  if (jsonIndex >= 0) fs.writeFileSync(args[jsonIndex + 1], JSON.stringify({ ...results, torchvision, transformers }, null, 2) + '\n');
}

if (process.env.TEE_BENCH_SIDE !== '1') void main();
