/**
 * A memory soak of early-exit training WITHOUT explicit disposal: no torch.tidy, no
 * dispose(), nothing but the garbage collector and the native sizes the tensors report to
 * V8. Every step takes a fresh batch out of the data (indexSelect, as a data loader does),
 * runs the early-exit model, the loss, backward and an SGD step, and reads the loss.
 *
 *   resnet20 (default)  the seed's model: test/fixtures/resnet20_scripted.pt with the exit
 *                       ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))],
 *                       batch 8 of random CIFAR-sized images
 *   mnist               models/mnist_cnn.pt with ['features1', nn.Sequential(nn.MaxPool2d(2),
 *                       nn.Flatten(), nn.Linear(784, 10))], batch 64 of real digits (loadMnist)
 *
 * earlyExitLoss with weights [0.3], SGD(lr 0.05, momentum 0.9, weight decay 5e-4), train mode,
 * one intra-op thread. RSS is sampled after step 100 (the baseline: by then the allocator,
 * the TorchScript executor and the optimizer state have settled) and every --sample-every
 * steps after it. PASS when no sample exceeds the baseline by more than --limit-mb (200);
 * the exit code is 1 on FAIL.
 *
 *   npm run build:ts && node dist/scripts/soak-train.js [--model resnet20|mnist] [--json out.json]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PerformanceObserver } from 'perf_hooks';
import type * as Lib from '../lib';
import { jsonFile, positiveInt } from './script-args';

type Tensor = Lib.Tensor;

let lib: typeof Lib;

const MB = 1024 * 1024;
const BASELINE_STEP = 100;

interface Options {
  model: 'resnet20' | 'mnist';
  steps: number;
  batch?: number;
  sampleEvery: number;
  progressEvery: number;
  limitMb: number;
  abortMb: number;
  yieldEvery: number;
  json?: string;
}

const USAGE = `usage: node dist/scripts/soak-train.js [options]
  --model resnet20|mnist  the seed's ResNet-20 (default, batch 8) or the MNIST CNN (batch 64, real digits)
  --steps N               training steps (default 2000)
  --batch N               batch size (default 8 for resnet20, 64 for mnist)
  --sample-every N        RSS sample interval in steps (default 25)
  --progress-every N      progress line interval in steps (default 250)
  --limit-mb N            allowed growth over the RSS after step ${BASELINE_STEP} (default 200)
  --yield-every N         let the event loop turn (await setImmediate) every N steps (default 1, as an
                          async training loop does, e.g. trainEarlyExitAsync or one awaiting its data);
                          0: never, a fully synchronous loop. Node-API runs the finalizers that free
                          unreachable tensors only when the event loop turns, so a loop that never
                          yields must dispose (torch.tidy) what it makes
  --abort-mb N            stop early, as a FAIL, once RSS exceeds the baseline by N MB (default 1000):
                          a leaking run need not take the machine's memory to show it
  --json FILE             also write the samples to FILE`;

function parseArgs(argv: string[]): Options {
  const options: Options = {
    model: 'resnet20', steps: 2000, sampleEvery: 25, progressEvery: 250, limitMb: 200, abortMb: 1000, yieldEvery: 1,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    switch (flag) {
      case '--model':
        if (value !== 'resnet20' && value !== 'mnist') throw new Error(`--model is resnet20 or mnist, got '${value}'`);
        options.model = value; i++; break;
      case '--steps': options.steps = positiveInt(flag, value); i++; break;
      case '--batch': options.batch = positiveInt(flag, value); i++; break;
      case '--sample-every': options.sampleEvery = positiveInt(flag, value); i++; break;
      case '--progress-every': options.progressEvery = positiveInt(flag, value); i++; break;
      case '--limit-mb': options.limitMb = positiveInt(flag, value); i++; break;
      case '--abort-mb': options.abortMb = positiveInt(flag, value); i++; break;
      case '--yield-every': {
        const n = Number(value);
        if (!Number.isInteger(n) || n < 0) throw new Error(`--yield-every needs a non-negative integer, got '${value}'`);
        options.yieldEvery = n; i++; break;
      }
      case '--json': options.json = jsonFile(value); i++; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0);
      default: throw new Error(`unknown argument '${flag}'\n${USAGE}`);
    }
  }
  if (options.steps <= BASELINE_STEP) throw new Error(`--steps must exceed ${BASELINE_STEP} (the baseline step)`);
  return options;
}

function packageFile(...parts: string[]): string {
  // dist/scripts/soak-train.js -> <package>/...
  const file = path.resolve(__dirname, '..', '..', ...parts);
  if (!fs.existsSync(file)) throw new Error(`no ${file}${parts[0] === 'test' ? ': run `npm run fixtures` first' : ''}`);
  return file;
}

interface Setup {
  description: string;
  model: Lib.EarlyExitModel;
  images: Tensor;
  labels: Tensor;
  batch: number;
}

function setup(options: Options): Setup {
  const { torch, jit, nn } = lib;
  if (options.model === 'resnet20') {
    const batch = options.batch ?? 8;
    const model = new lib.EarlyExitModel(jit.load(packageFile('test', 'fixtures', 'resnet20_scripted.pt')),
      [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
    // A pool of random CIFAR-sized images with labels; every step indexes a fresh batch out of it.
    const count = 1024;
    return {
      description: `ResNet-20 (resnet20_scripted.pt) + exit at layer1.2.relu2, batch ${batch}, random images`,
      model, images: torch.randn([count, 3, 32, 32]), labels: torch.randint(0, 10, [count]), batch,
    };
  }
  const batch = options.batch ?? 64;
  const model = new lib.EarlyExitModel(jit.load(packageFile('models', 'mnist_cnn.pt')),
    [['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))]]);
  const { train } = lib.loadMnist({ train: 8000, test: 2000, seed: 0 });
  return {
    description: `MNIST CNN (models/mnist_cnn.pt) + exit at features1, batch ${batch}, real digits (mnist package)`,
    model, images: train.images, labels: train.labels, batch,
  };
}

interface Sample {
  step: number; rssMb: number; heapUsedMb: number; externalMb: number; arrayBuffersMb: number; ms: number;
  /** The CPU block cache: tensor bytes in use, and free blocks kept for reuse (torch.memoryStats()). */
  tensorMb: number; cachedMb: number;
}

const mb = (bytes: number): number => bytes / MB;
const fmt = (value: number, digits = 1): string => value.toFixed(digits);

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (!process.env.OPENBLAS_NUM_THREADS) process.env.OPENBLAS_NUM_THREADS = '1';
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  lib = require('../lib') as typeof Lib;
  const { torch } = lib;
  torch.setNumThreads(1);
  torch.manualSeed(0);

  // GC entries reach the observer only when the event loop turns: in a synchronous loop they
  // are counted at the end.
  const gcCounts = { minor: 0, major: 0, other: 0, ms: 0 };
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = (entry as unknown as { detail?: { kind?: number } }).detail?.kind;
      // perf_hooks constants: NODE_PERFORMANCE_GC_MINOR 1, MAJOR 4, INCREMENTAL 8, WEAKCB 16.
      if (kind === 1) gcCounts.minor++;
      else if (kind === 4) gcCounts.major++;
      else gcCounts.other++;
      gcCounts.ms += entry.duration;
    }
  });
  observer.observe({ entryTypes: ['gc'] });

  const { description, model, images, labels, batch } = setup(options);
  model.train();
  const optimizer = new lib.optim.SGD(model.parameters(), { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 });
  const count = images.shape[0];
  const batchesPerEpoch = Math.floor(count / batch);

  console.log('torch-early-exit: training memory soak without explicit disposal (no tidy, no dispose)');
  console.log(`${description}; ${options.steps} steps; SGD lr 0.05 momentum 0.9 wd 5e-4; earlyExitLoss [0.3]; ` +
    `1 intra-op thread; LibTorch ${torch.version.libtorch}, Node ${process.version}`);
  const cache = torch.memoryStats();
  console.log(`loop: ${options.yieldEvery === 0 ? 'synchronous (the event loop never turns)' : `yields to the event loop every ${options.yieldEvery} step(s)`}; ` +
    `MALLOC_MMAP_THRESHOLD_=${process.env.MALLOC_MMAP_THRESHOLD_ ?? '(glibc default, dynamic)'}; ` +
    `CPU block cache ${cache.enabled ? `on, limit ${fmt(cache.limitBytes / MB, 0)} MB (TEE_CPU_CACHE_MB)` : 'off (TEE_CPU_CACHE_MB=0)'}`);
  console.log(`PASS when RSS stays within ${options.limitMb} MB of the RSS after step ${BASELINE_STEP}; ` +
    `sampled every ${options.sampleEvery} steps; stops early past +${options.abortMb} MB`);

  const samples: Sample[] = [];
  const take = (step: number, ms: number): Sample => {
    const usage = process.memoryUsage();
    const memory = torch.memoryStats();
    const sample = {
      step, rssMb: mb(usage.rss), heapUsedMb: mb(usage.heapUsed), externalMb: mb(usage.external),
      arrayBuffersMb: mb(usage.arrayBuffers), ms, tensorMb: mb(memory.allocatedBytes), cachedMb: mb(memory.cachedBytes),
    };
    samples.push(sample);
    return sample;
  };
  const rssStart = mb(process.memoryUsage().rss);
  const started = Date.now();
  let windowStart = Date.now();
  let order: Tensor | null = null;
  let loss = NaN;
  let aborted: number | null = null;
  let baselineRss = NaN;
  let stepsRun = 0;
  for (let step = 1; step <= options.steps; step++) {
    const slot = (step - 1) % batchesPerEpoch;
    if (slot === 0) order = torch.randperm(count);
    const index = order!.narrow(0, slot * batch, batch);
    const x = images.indexSelect(0, index);
    const y = labels.indexSelect(0, index);
    const outputs = model.forward(x);
    const value = lib.earlyExitLoss(outputs, y, [0.3]);
    optimizer.zeroGrad();
    value.backward();
    optimizer.step();
    loss = value.item() as number;
    stepsRun = step;
    if (options.yieldEvery > 0 && step % options.yieldEvery === 0) await turn();

    if (step === BASELINE_STEP || (step > BASELINE_STEP && step % options.sampleEvery === 0) || step === options.steps) {
      const now = Date.now();
      const sample = take(step, now - windowStart);
      windowStart = now;
      if (step === BASELINE_STEP) baselineRss = sample.rssMb;
      const abort = sample.rssMb - baselineRss > options.abortMb;
      if (step === BASELINE_STEP || step % options.progressEvery === 0 || step === options.steps || abort) {
        console.log(`step ${String(step).padStart(5)}: rss ${fmt(sample.rssMb)} MB (tensors ${fmt(sample.tensorMb)}, ` +
          `cached free blocks ${fmt(sample.cachedMb)}), V8 heap ${fmt(sample.heapUsedMb)} MB, ` +
          `loss ${loss.toFixed(4)}, ${fmt((now - started) / step)} ms/step`);
      }
      if (abort) {
        aborted = step;
        console.log(`stopping at step ${step}: RSS is more than ${options.abortMb} MB over the baseline`);
        break;
      }
    }
  }
  const seconds = (Date.now() - started) / 1000;
  const rssBeforeTurn = mb(process.memoryUsage().rss);
  await turn();
  await turn();
  const rssAfterTurn = mb(process.memoryUsage().rss);
  torch.emptyCache();
  const rssAfterEmpty = mb(process.memoryUsage().rss);
  observer.disconnect();

  const baseline = samples.find((s) => s.step === BASELINE_STEP)!;
  const after = samples.filter((s) => s.step >= BASELINE_STEP);
  const max = after.reduce((a, b) => (b.rssMb > a.rssMb ? b : a));
  const final = samples[samples.length - 1];
  const growth = max.rssMb - baseline.rssMb;
  const pass = aborted === null && growth <= options.limitMb;
  // Least-squares slope of RSS over the steps after the baseline: a steady leak shows here.
  const n = after.length;
  const meanStep = after.reduce((a, s) => a + s.step, 0) / n;
  const meanRss = after.reduce((a, s) => a + s.rssMb, 0) / n;
  const slope = n < 2 ? 0 : after.reduce((a, s) => a + (s.step - meanStep) * (s.rssMb - meanRss), 0) /
    after.reduce((a, s) => a + (s.step - meanStep) ** 2, 0);

  console.log('\nRSS (MB)');
  const rows = [
    ['at start (model, data and optimizer built)', fmt(rssStart)],
    [`after step ${BASELINE_STEP} (baseline)`, fmt(baseline.rssMb)],
    [`max after the baseline (step ${max.step})`, fmt(max.rssMb)],
    [`final (step ${final.step})`, fmt(final.rssMb)],
    ['max - baseline', fmt(growth)],
    ['final - baseline', fmt(final.rssMb - baseline.rssMb)],
    ['trend after the baseline (MB per 1000 steps)', fmt(slope * 1000, 1)],
    ['after the loop, once the event loop has turned', fmt(rssAfterTurn)],
    ['after that, torch.emptyCache()', fmt(rssAfterEmpty)],
  ];
  const width = Math.max(...rows.map((r) => r[0].length));
  for (const [label, value] of rows) console.log(`  ${label.padEnd(width)}  ${value.padStart(8)}`);
  console.log(`  V8 heap used: ${fmt(baseline.heapUsedMb)} MB at the baseline, ${fmt(final.heapUsedMb)} MB at the end; ` +
    `GCs: ${gcCounts.minor} minor, ${gcCounts.major} major, ${gcCounts.other} other (${fmt(gcCounts.ms, 0)} ms)`);
  console.log(`  ${stepsRun} steps in ${fmt(seconds)} s (${fmt((seconds * 1000) / stepsRun)} ms/step); last loss ${loss.toFixed(4)}`);
  const verdict = pass
    ? `PASS: RSS stays within ${options.limitMb} MB of the RSS after step ${BASELINE_STEP}`
    : `FAIL: RSS does not stay within ${options.limitMb} MB of the RSS after step ${BASELINE_STEP}` +
      (aborted !== null ? ` (stopped at step ${aborted} of ${options.steps})` : '');
  console.log(`\n${verdict}: baseline ${fmt(baseline.rssMb)} MB, max ${fmt(max.rssMb)} MB (+${fmt(growth)} MB), final ${fmt(final.rssMb)} MB`);
  if (!pass && options.yieldEvery === 0 && rssAfterTurn < rssBeforeTurn - options.limitMb / 2) {
    console.log(`note: RSS fell from ${fmt(rssBeforeTurn)} to ${fmt(rssAfterTurn)} MB as soon as the event loop turned: ` +
      'the tensors were garbage but their native finalizers (Node-API runs them from the event loop) had not run. ' +
      'Compare --yield-every 1.');
  }

  if (options.json) {
    fs.writeFileSync(options.json, JSON.stringify({
      benchmark: 'soak-train', date: new Date().toISOString(),
      environment: {
        libtorch: torch.version.libtorch, node: process.version, cpus: os.cpus().length, loadAverage: os.loadavg(),
        mallocMmapThreshold: process.env.MALLOC_MMAP_THRESHOLD_ ?? null, cpuBlockCache: torch.memoryStats(),
      },
      method: {
        description, steps: options.steps, batch, baselineStep: BASELINE_STEP, limitMb: options.limitMb, abortMb: options.abortMb,
        yieldEvery: options.yieldEvery, disposal: 'none (GC only)',
      },
      results: {
        rssStartMb: rssStart, baselineMb: baseline.rssMb, maxMb: max.rssMb, maxStep: max.step, finalMb: final.rssMb,
        growthMb: growth, slopeMbPer1000Steps: slope * 1000, rssAfterEventLoopTurnMb: rssAfterTurn, rssAfterEmptyCacheMb: rssAfterEmpty, stepsRun, aborted,
        pass, gc: gcCounts, seconds, samples,
      },
    }, null, 2) + '\n');
    console.log(`wrote ${options.json}`);
  }
  process.exitCode = pass ? 0 : 1;
}

main().catch((error) => {
  console.error(error instanceof Error ? (process.env.BENCH_DEBUG ? error.stack : error.message) : error);
  process.exit(1);
});
