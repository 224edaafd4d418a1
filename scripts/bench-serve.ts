/**
 * Early exits served under load, over HTTP on loopback: open-loop Poisson arrivals (each
 * request sent on its schedule whether or not earlier ones have answered, so queueing shows)
 * of held-out MNIST digits that chose nothing (the demo's served half) to
 * `torch-early-exit serve` of the demo's trained checkpoint, at about 30%, 60% and 90% of the
 * full model's batched capacity (measured first, closed-loop with many requests in flight).
 * For each load and each way of serving:
 *
 *   (a) full       the network without exits, with the same batching
 *   (b) batch      exits, a batch leaving only when all of it does
 *   (c) per-sample exits per sample, each answered when it leaves (early release)
 *
 * it reports p50/p90/p99 latency (client side, send to answer), throughput, accuracy and exit
 * shares, and draws latency against load (SVG). Thresholds are the demo's, chosen on the
 * other half of the held-out digits.
 *
 *   npm run bench:serve -- [--checkpoint DIR] [--seconds S] [--loads 0.3,0.6,0.9] [--out DIR]
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadMnist } from '../lib/data/mnist';
import { lineChartSvg } from '../lib/cli/plot';
import { DemoServing } from '../lib/cli/demo';
import { packageRoot } from '../lib/package-root';
import { quantile, table } from './bench-stats';
import { positiveInt } from './script-args';

const ROOT = packageRoot();
const CLI = path.join(ROOT, 'bin', 'torch-early-exit.js');

type Mode = 'full' | 'batch' | 'perSample';
const MODES: Mode[] = ['full', 'batch', 'perSample'];
const LABEL: Record<Mode, string> = { full: '(a) full network', batch: '(b) whole-batch exits', perSample: '(c) per-sample exits, early release' };
const MODE_FLAGS: Record<Mode, string[]> = { full: ['--full'], batch: ['--whole-batch'], perSample: [] };

interface Digit { input: number[]; label: number }

/** Starts `serve` in its own process and resolves with its URL once it listens. */
function startServer(checkpoint: string, mode: Mode, batching: string[]): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, [CLI, 'serve', checkpoint, '--port', '0', ...batching, ...MODE_FLAGS[mode]],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const found = /on (http:\/\/[^:]+:\d+)/.exec(out);
      if (found) resolve({ url: found[1], child });
    });
    child.on('exit', (code) => reject(new Error(`serve (${mode}) exited with ${code} before listening:\n${out}`)));
  });
}

async function stopServer(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGINT');
  await exited;
}

interface Sample { latencyMs: number; correct: boolean; exit: number; status: number }

async function request(url: string, digit: Digit): Promise<Sample> {
  const started = performance.now();
  const reply = await fetch(`${url}/predict`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ input: digit.input }) });
  const body = await reply.json() as { prediction?: number; exit?: number };
  return { latencyMs: performance.now() - started, correct: body.prediction === digit.label, exit: body.exit ?? -1, status: reply.status };
}

/** Closed loop with `concurrency` requests in flight for `seconds`: answers per second. */
async function capacity(url: string, digits: Digit[], concurrency: number, seconds: number): Promise<number> {
  const end = performance.now() + seconds * 1000;
  let answered = 0;
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const sample = await request(url, digits[next++ % digits.length]);
      if (sample.status === 200) answered++;
    }
  }));
  return answered / seconds;
}

/** Open loop: Poisson arrivals at `rate` a second for `seconds`, every answer awaited. */
async function openLoop(url: string, digits: Digit[], rate: number, seconds: number, seed: number): Promise<{ samples: Sample[]; seconds: number }> {
  let state = seed >>> 0;
  const random = () => { state = (state * 1664525 + 1013904223) >>> 0; return (state + 0.5) / 2 ** 32; };
  const pending: Array<Promise<Sample>> = [];
  const started = performance.now();
  let at = 0;
  for (let i = 0; at < seconds * 1000; i++) {
    const wait = started + at - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    pending.push(request(url, digits[i % digits.length]));
    at += (-Math.log(random()) / rate) * 1000;
  }
  const samples = await Promise.all(pending);
  return { samples, seconds: (performance.now() - started) / 1000 };
}

interface Cell { mode: Mode; load: number; rate: number; p50: number; p90: number; p99: number; throughput: number; accuracy: number; exitShares: number[]; errors: number }

function summarize(mode: Mode, load: number, rate: number, run: { samples: Sample[]; seconds: number }): Cell {
  const ok = run.samples.filter((s) => s.status === 200);
  const latencies = ok.map((s) => s.latencyMs);
  const exits = Math.max(0, ...ok.map((s) => s.exit)) + 1;
  const shares = Array.from({ length: exits }, (_, e) => ok.filter((s) => s.exit === e).length / ok.length);
  return {
    mode, load, rate, p50: quantile(latencies, 0.5), p90: quantile(latencies, 0.9), p99: quantile(latencies, 0.99),
    throughput: ok.length / run.seconds, accuracy: (100 * ok.filter((s) => s.correct).length) / ok.length, exitShares: shares,
    errors: run.samples.length - ok.length,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (name: string) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
  const checkpoint = flag('--checkpoint') ?? path.join('out', 'demo', 'checkpoint');
  const seconds = flag('--seconds') === undefined ? 10 : positiveInt('--seconds', flag('--seconds'));
  const loads = (flag('--loads') ?? '0.3,0.6,0.9').split(',').map(Number);
  const out = flag('--out') ?? path.join('out', 'bench-serve');
  const batching = ['--max-batch-size', flag('--max-batch-size') ?? '32', '--max-queue-delay-ms', flag('--max-queue-delay-ms') ?? '2'];
  if (!fs.existsSync(path.join(checkpoint, 'checkpoint.json'))) {
    throw new Error(`no checkpoint in ${checkpoint}: run \`npm run demo\` (or torch-early-exit serve, which runs it) first`);
  }
  const serving = (JSON.parse(fs.readFileSync(path.join(checkpoint, 'checkpoint.json'), 'utf8')).extra as { serving: DemoServing }).serving;
  const { test } = loadMnist({ train: serving.data.train, test: serving.data.test, seed: serving.data.seed });
  const count = test.images.shape[0] - serving.data.calibration;
  const images = test.images.narrow(0, serving.data.calibration, count).data() as Float32Array;
  const labels = Array.from(test.labels.narrow(0, serving.data.calibration, count).data() as BigInt64Array, Number);
  const digits: Digit[] = labels.map((label, i) => ({ input: Array.from(images.subarray(i * 784, (i + 1) * 784)), label }));
  console.log(`bench:serve: ${checkpoint} over HTTP on loopback, ${digits.length} held-out digits that chose nothing; ` +
    `${os.cpus().length} CPUs; server: ${batching.join(' ')}, instances one per core, one intra-op thread each; ` +
    `${serving.policy.criterion} thresholds [${serving.policy.thresholds}]`);

  const full = await startServer(checkpoint, 'full', batching);
  await capacity(full.url, digits, 64, 1);
  const peak = await capacity(full.url, digits, 64, Math.max(3, seconds / 2));
  await stopServer(full.child);
  console.log(`capacity of (a), closed loop with 64 requests in flight: ${peak.toFixed(0)} answers/s\n`);

  const cells: Cell[] = [];
  for (const mode of MODES) {
    const server = await startServer(checkpoint, mode, batching);
    try {
      await openLoop(server.url, digits, peak * 0.3, 1, 1); // warm up
      for (const [i, load] of loads.entries()) {
        const cell = summarize(mode, load, peak * load, await openLoop(server.url, digits, peak * load, seconds, 100 + i));
        cells.push(cell);
        console.error(`${LABEL[mode]} at ${(load * 100).toFixed(0)}%: p50 ${cell.p50.toFixed(2)} ms, p99 ${cell.p99.toFixed(2)} ms`);
      }
    } finally {
      await stopServer(server.child);
    }
  }

  const rows = [['serving', 'load', 'offered/s', 'p50 ms', 'p90 ms', 'p99 ms', 'answers/s', 'accuracy', 'exit shares', 'errors']];
  for (const c of cells) {
    rows.push([LABEL[c.mode], `${(c.load * 100).toFixed(0)}%`, c.rate.toFixed(0), c.p50.toFixed(2), c.p90.toFixed(2), c.p99.toFixed(2),
      c.throughput.toFixed(0), `${c.accuracy.toFixed(2)}%`, c.exitShares.map((s) => (100 * s).toFixed(0) + '%').join(' / '), String(c.errors)]);
  }
  console.log(table(rows, rows[0].map((_, i) => i > 0 && i !== 8)));
  for (const load of loads) {
    const [a, c] = [cells.find((x) => x.mode === 'full' && x.load === load)!, cells.find((x) => x.mode === 'perSample' && x.load === load)!];
    console.log(`at ${(load * 100).toFixed(0)}%: (c)/(a) median ${(c.p50 / a.p50).toFixed(2)}, p99 ${(c.p99 / a.p99).toFixed(2)}, ` +
      `throughput ${(c.throughput / a.throughput).toFixed(2)}, accuracy ${(c.accuracy - a.accuracy).toFixed(2)} points`);
  }
  fs.mkdirSync(out, { recursive: true });
  const series = MODES.flatMap((mode) => (['p50', 'p99'] as const).map((q) => ({
    name: `${LABEL[mode]}, ${q}`, dashed: q === 'p99',
    points: cells.filter((c) => c.mode === mode).map((c) => ({ x: c.load * 100, y: c[q] })),
  })));
  fs.writeFileSync(path.join(out, 'latency.svg'), lineChartSvg(series, {
    title: 'Early exits served over HTTP: latency against load (MNIST)', x: 'load (% of the full network\'s batched capacity)',
    y: 'latency (ms)', xFormat: (x) => `${x.toFixed(0)}%`,
  }));
  fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify({ checkpoint, capacity: peak, batching, seconds, cells }, null, 2) + '\n');
  console.log(`\nwrote ${path.join(out, 'latency.svg')} and ${path.join(out, 'results.json')}`);
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
