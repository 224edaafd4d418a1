/**
 * Early exits served under load, over HTTP on loopback (Node's http client, kept-alive
 * connections, digits as raw float32 bodies; with the checkpoint of `demo --task spam`,
 * held-out e-mails as token ids in JSON, the drift part left out): open-loop Poisson arrivals (each
 * request sent on its schedule whether or not earlier ones have answered, so queueing shows)
 * of held-out MNIST digits that chose nothing (the demo's served half) to
 * `torch-early-exit serve` of the demo's trained checkpoint, at about 30%, 60% and 90% of the
 * full model's batched capacity (measured first, closed-loop with many requests in flight).
 * For each load and each way of serving:
 *
 *   (a) full       the network without exits, with the same batching
 *   (b) batch      exits, a batch leaving only when all of it does
 *   (c) per-sample exits per sample, each answered when it leaves (early release)
 *   (d) adaptive   (c) with thresholds retuned online (Apparate) to hold 99% agreement with
 *                  the final output, from 5% of the requests also run to the end
 *
 * it reports p50/p90/p99 latency (client side, send to answer), the server's own median (queued
 * + computed), the cores the client and the server kept busy, throughput, accuracy, agreement
 * with the full network's answers (computed here, in this process) and exit shares, and draws
 * latency against load (SVG). Thresholds start as the demo's, chosen on the other half of the
 * held-out digits. Then (c) and (d) serve a mix that changes halfway, clean digits then noisy
 * ones, and the agreement of each half is reported.
 *
 *   npm run bench:serve -- [--checkpoint DIR] [--seconds S] [--loads 0.3,0.6,0.9] [--out DIR]
 */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, Tensor, loadCheckpoint, torch } from '../lib';
import { loadMnist } from '../lib/data/mnist';
import { Email, halveByGroup, loadSpamAssassin, splitEmails } from '../lib/data/spam-assassin';
import { WordTokenizer } from '../lib/text/tokenizer';
import { lineChartSvg } from '../lib/cli/plot';
import { DemoServing } from '../lib/cli/demo';
import { packageRoot } from '../lib/util/package-root';
import { quantile, quantiles } from '../lib/util/quantile';
import { table } from './bench-stats';
import { flagValue, positiveInt } from './script-args';

const ROOT = packageRoot();
const NOISE = 1.0;
const CLI = path.join(ROOT, 'bin', 'torch-early-exit.js');

type Mode = 'full' | 'batch' | 'perSample' | 'adaptive';
const MODES: Mode[] = ['full', 'batch', 'perSample', 'adaptive'];
const LABEL: Record<Mode, string> = {
  full: '(a) full network', batch: '(b) whole-batch exits', perSample: '(c) per-sample exits, early release',
  adaptive: '(d) (c) + online thresholds',
};
const MODE_FLAGS: Record<Mode, string[]> = { full: ['--full'], batch: ['--whole-batch'], perSample: [], adaptive: ['--adaptive'] };

/** Clock ticks a second of /proc/<pid>/stat's CPU times. */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

/** CPU seconds (user + system, all threads) that process `pid` has used, from /proc. */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS; // utime and stime, fields 14 and 15
}

/** Runs `work` and says how many cores the client (this process) and the server kept busy meanwhile. */
async function coresBusy<T>(server: ChildProcess, work: () => Promise<T & { seconds: number }>): Promise<T & { seconds: number; clientCores: number; serverCores: number }> {
  const [client, serverBefore] = [process.cpuUsage(), cpuSeconds(server.pid!)];
  const result = await work();
  const used = process.cpuUsage(client);
  return {
    ...result,
    clientCores: (used.user + used.system) / 1e6 / result.seconds,
    serverCores: (cpuSeconds(server.pid!) - serverBefore) / result.seconds,
  };
}

/**
 * One request's body (a digit as raw float32 bytes, an e-mail's token ids as JSON) and its
 * headers, its label, and what the full network answers for it (computed here, in this process).
 */
interface Item { body: Buffer; headers: Record<string, string>; label: number; full: number }

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

/** One answer: the client's latency, and the server's own (queued + computed, from arrival in the batcher to the answer). */
interface Sample { latencyMs: number; serverMs: number; correct: boolean; agrees: boolean; exit: number; status: number }

/** Kept-alive connections, as many as requests in flight: an open loop must never wait for a socket. */
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/**
 * One request with Node's http client (lighter than fetch: this machine's two cores run the
 * client too): a digit as raw float32 bytes, as a client that sends tensors would, or an
 * e-mail's token ids as JSON.
 */
function request(url: string, item: Item): Promise<Sample> {
  const { hostname, port } = new URL(url);
  const body = item.body;
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: hostname, port: Number(port), path: '/predict', method: 'POST', agent,
      headers: { ...item.headers, 'content-length': body.length },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const answer = JSON.parse(Buffer.concat(chunks).toString()) as { prediction?: number; exit?: number; latencyMs?: number };
        resolve({
          latencyMs: performance.now() - started, serverMs: answer.latencyMs ?? NaN, correct: answer.prediction === item.label, agrees: answer.prediction === item.full,
          exit: answer.exit ?? -1, status: res.statusCode ?? 0,
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** What the full network answers for `inputs` (a batch), computed here. */
function fullAnswers(model: EarlyExitModel, inputs: Tensor): number[] {
  return torch.noGrad(() => torch.tidy(() => {
    const outputs = model.forward(inputs);
    return Array.from(outputs[outputs.length - 1].argmax(1).data() as BigInt64Array, Number);
  }));
}

/** The digits of `images` with their labels and the full network's answers. */
function digitsOf(model: EarlyExitModel, images: Tensor, labels: number[]): Item[] {
  const data = images.data() as Float32Array;
  const full = fullAnswers(model, images);
  const headers = { 'content-type': 'application/octet-stream', 'x-input-shape': '1,1,28,28' };
  return labels.map((label, i) => ({ body: Buffer.from(data.slice(i * 784, (i + 1) * 784).buffer), headers, label, full: full[i] }));
}

/** E-mails as their token ids in JSON, with their labels and the full network's answers (on the padded batch, which masks the padding). */
function emailsOf(model: EarlyExitModel, emails: Email[], tokenizer: WordTokenizer): Item[] {
  const full = fullAnswers(model, tokenizer.encodeBatch(emails.map((email) => email.text)).inputIds);
  const headers = { 'content-type': 'application/json' };
  return emails.map((email, i) => ({ body: Buffer.from(JSON.stringify({ input: tokenizer.encode(email.text) })), headers, label: email.label, full: full[i] }));
}

/** Closed loop with `concurrency` requests in flight for `seconds`: answers per second. */
async function capacity(url: string, items: Item[], concurrency: number, seconds: number): Promise<number> {
  const end = performance.now() + seconds * 1000;
  let answered = 0;
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const sample = await request(url, items[next++ % items.length]);
      if (sample.status === 200) answered++;
    }
  }));
  return answered / seconds;
}

/**
 * Open loop: Poisson arrivals at `rate` a second for `seconds`, every answer awaited; the
 * requests come from `items`, or from `later` once `switchAt` of the time has passed.
 */
async function openLoop(url: string, items: Item[], rate: number, seconds: number, seed: number,
  later?: Item[], switchAt = 0.5): Promise<{ samples: Sample[]; seconds: number }> {
  let state = seed >>> 0;
  const random = () => { state = (state * 1664525 + 1013904223) >>> 0; return (state + 0.5) / 2 ** 32; };
  const pending: Array<Promise<Sample>> = [];
  const started = performance.now();
  let at = 0;
  for (let i = 0; at < seconds * 1000; i++) {
    const wait = started + at - performance.now();
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
    const source = later && at >= switchAt * seconds * 1000 ? later : items;
    pending.push(request(url, source[i % source.length]));
    at += (-Math.log(random()) / rate) * 1000;
  }
  const samples = await Promise.all(pending);
  return { samples, seconds: (performance.now() - started) / 1000 };
}

interface Cell {
  mode: Mode; load: number; rate: number; p50: number; p90: number; p99: number; throughput: number; accuracy: number;
  /** The server's median time (queued + computed); the rest of p50 is HTTP, parsing and the two event loops. */
  serverP50: number;
  /** Cores kept busy during the run, by the client (this process) and by the server. */
  clientCores: number; serverCores: number;
  /** Share of answers equal to the full network's (%). */
  agreement: number; exitShares: number[]; errors: number;
}

function percentiles(latencies: number[]): { p50: number; p90: number; p99: number } {
  const [p50, p90, p99] = quantiles(latencies, [0.5, 0.9, 0.99]);
  return { p50, p90, p99 };
}

function summarize(mode: Mode, load: number, rate: number,
  run: { samples: Sample[]; seconds: number; clientCores: number; serverCores: number }): Cell {
  const ok = run.samples.filter((s) => s.status === 200);
  const latencies = ok.map((s) => s.latencyMs);
  const exits = Math.max(0, ...ok.map((s) => s.exit)) + 1;
  const shares = Array.from({ length: exits }, (_, e) => ok.filter((s) => s.exit === e).length / ok.length);
  return {
    mode, load, rate, ...percentiles(latencies), serverP50: quantile(ok.map((s) => s.serverMs), 0.5),
    throughput: ok.length / run.seconds, accuracy: (100 * ok.filter((s) => s.correct).length) / ok.length,
    agreement: (100 * ok.filter((s) => s.agrees).length) / ok.length, exitShares: shares,
    errors: run.samples.length - ok.length, clientCores: run.clientCores, serverCores: run.serverCores,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (name: string) => flagValue(args, name);
  const checkpoint = flag('--checkpoint') ?? path.join('out', 'demo', 'checkpoint');
  const seconds = flag('--seconds') === undefined ? 10 : positiveInt('--seconds', flag('--seconds'));
  const loads = (flag('--loads') ?? '0.3,0.6,0.9').split(',').map(Number);
  const out = flag('--out') ?? path.join('out', 'bench-serve');
  const batching = ['--max-batch-size', flag('--max-batch-size') ?? '32', '--max-queue-delay-ms', flag('--max-queue-delay-ms') ?? '2'];
  if (!fs.existsSync(path.join(checkpoint, 'checkpoint.json'))) {
    throw new Error(`no checkpoint in ${checkpoint}: run \`npm run demo\` (or torch-early-exit serve, which runs it) first`);
  }
  const serving = (JSON.parse(fs.readFileSync(path.join(checkpoint, 'checkpoint.json'), 'utf8')).extra as { serving: DemoServing }).serving;
  const model = loadCheckpoint(checkpoint).model.eval();
  let items: Item[];
  let noisy: Item[] | undefined;
  let what: string;
  if ('corpus' in serving.data) {
    // The e-mails that chose nothing: the second half of the held-out ones, each its own length.
    const [, report] = halveByGroup(splitEmails(loadSpamAssassin()).test);
    items = emailsOf(model, report, WordTokenizer.load(serving.tokenizer!));
    what = `${items.length} held-out e-mails that chose nothing, as token ids of their own length`;
  } else {
    const { test } = loadMnist({ train: serving.data.train, test: serving.data.test, seed: serving.data.seed });
    const count = test.images.shape[0] - serving.data.calibration;
    const images = test.images.narrow(0, serving.data.calibration, count);
    const labels = Array.from(test.labels.narrow(0, serving.data.calibration, count).data() as BigInt64Array, Number);
    items = digitsOf(model, images, labels);
    // The drift: the same digits with Gaussian noise (in the normalised scale), seeded.
    torch.manualSeed(5);
    noisy = digitsOf(model, torch.noGrad(() => images.add(torch.randn(images.shape).mul(NOISE))), labels);
    what = `${items.length} held-out digits that chose nothing`;
  }
  console.log(`bench:serve: ${checkpoint} over HTTP on loopback, ${what}; ` +
    `${os.cpus().length} CPUs; server: ${batching.join(' ')}, instances one per core, one intra-op thread each; ` +
    `${serving.policy.criterion} thresholds [${serving.policy.thresholds}]`);

  const full = await startServer(checkpoint, 'full', batching);
  await capacity(full.url, items, 64, 1);
  const peak = await capacity(full.url, items, 64, Math.max(3, seconds / 2));
  await stopServer(full.child);
  console.log(`capacity of (a), closed loop with 64 requests in flight: ${peak.toFixed(0)} answers/s\n`);

  const cells: Cell[] = [];
  for (const mode of MODES) {
    const server = await startServer(checkpoint, mode, batching);
    try {
      await openLoop(server.url, items, peak * 0.3, 1, 1); // warm up
      for (const [i, load] of loads.entries()) {
        const cell = summarize(mode, load, peak * load,
          await coresBusy(server.child, () => openLoop(server.url, items, peak * load, seconds, 100 + i)));
        cells.push(cell);
        console.error(`${LABEL[mode]} at ${(load * 100).toFixed(0)}%: p50 ${cell.p50.toFixed(2)} ms, p99 ${cell.p99.toFixed(2)} ms`);
      }
    } finally {
      await stopServer(server.child);
    }
  }

  const rows = [['serving', 'load', 'offered/s', 'p50 ms', 'p90 ms', 'p99 ms', 'server p50 ms', 'answers/s', 'accuracy', 'agrees with (a)', 'exit shares', 'errors', 'cores: client + server']];
  for (const c of cells) {
    rows.push([LABEL[c.mode], `${(c.load * 100).toFixed(0)}%`, c.rate.toFixed(0), c.p50.toFixed(2), c.p90.toFixed(2), c.p99.toFixed(2), c.serverP50.toFixed(2),
      c.throughput.toFixed(0), `${c.accuracy.toFixed(2)}%`, `${c.agreement.toFixed(2)}%`,
      c.exitShares.map((share) => (100 * share).toFixed(0) + '%').join(' / '), String(c.errors),
      `${c.clientCores.toFixed(2)} + ${c.serverCores.toFixed(2)}`]);
  }
  console.log(table(rows, rows[0].map((_, i) => i > 0 && i !== 10)));
  for (const load of loads) {
    const [a, c] = [cells.find((x) => x.mode === 'full' && x.load === load)!, cells.find((x) => x.mode === 'perSample' && x.load === load)!];
    console.log(`at ${(load * 100).toFixed(0)}%: (c)/(a) median ${(c.p50 / a.p50).toFixed(2)}, p99 ${(c.p99 / a.p99).toFixed(2)}, ` +
      `throughput ${(c.throughput / a.throughput).toFixed(2)}, accuracy ${(c.accuracy - a.accuracy).toFixed(2)} points; ` +
      `server's own median ${(c.serverP50 / a.serverP50).toFixed(2)} (${c.serverP50.toFixed(2)} vs ${a.serverP50.toFixed(2)} ms), ` +
      `the rest of the median ${(c.p50 - c.serverP50).toFixed(2)} vs ${(a.p50 - a.serverP50).toFixed(2)} ms`);
  }
  // The input mix changes halfway: clean digits, then noisy ones, at the middle load.
  const middle = loads[Math.floor(loads.length / 2)];
  const drift: Array<{ mode: Mode; clean: number; noisy: number; noisyLate: number; cleanExit0: number; noisyExit0: number }> = [];
  for (const mode of noisy ? ['perSample', 'adaptive'] as const : []) {
    const server = await startServer(checkpoint, mode, batching);
    try {
      await openLoop(server.url, items, peak * 0.3, 2, 1); // warm up (and, adapting, settle on clean digits)
      const run = await openLoop(server.url, items, peak * middle, 2 * seconds, 7, noisy, 0.5);
      const half = Math.floor(run.samples.length / 2);
      const share = (samples: Sample[], test: (s: Sample) => boolean) => (100 * samples.filter(test).length) / samples.length;
      const [first, second] = [run.samples.slice(0, half), run.samples.slice(half)];
      drift.push({
        mode, clean: share(first, (x) => x.agrees), noisy: share(second, (x) => x.agrees),
        noisyLate: share(second.slice(Math.floor(second.length / 2)), (x) => x.agrees),
        cleanExit0: share(first, (x) => x.exit === 0), noisyExit0: share(second, (x) => x.exit === 0),
      });
    } finally {
      await stopServer(server.child);
    }
  }
  if (noisy) {
    console.log(`\ndrift at ${(middle * 100).toFixed(0)}% load: ${seconds} s of clean digits, then ${seconds} s of the same with noise ` +
      `(N(0, ${NOISE}) in the normalised scale); agreement with the full network's answers, and the share leaving at exit 0:`);
    console.log(table([['serving', 'clean: agrees', 'noisy: agrees', 'noisy, last half: agrees', 'clean: exit 0', 'noisy: exit 0'],
      ...drift.map((d) => [LABEL[d.mode], `${d.clean.toFixed(2)}%`, `${d.noisy.toFixed(2)}%`, `${d.noisyLate.toFixed(2)}%`,
        `${d.cleanExit0.toFixed(0)}%`, `${d.noisyExit0.toFixed(0)}%`])],
    [false, true, true, true, true, true]));
  }

  fs.mkdirSync(out, { recursive: true });
  const series = MODES.flatMap((mode) => (['p50', 'p99'] as const).map((q) => ({
    name: `${LABEL[mode]}, ${q}`, dashed: q === 'p99',
    points: cells.filter((c) => c.mode === mode).map((c) => ({ x: c.load * 100, y: c[q] })),
  })));
  fs.writeFileSync(path.join(out, 'latency.svg'), lineChartSvg(series, {
    title: `Early exits served over HTTP: latency against load (${'corpus' in serving.data ? 'SpamAssassin e-mails' : 'MNIST'})`, x: 'load (% of the full network\'s batched capacity)',
    y: 'latency (ms)', xFormat: (x) => `${x.toFixed(0)}%`,
  }));
  fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify({ checkpoint, capacity: peak, batching, seconds, cells, drift, noise: NOISE }, null, 2) + '\n');
  console.log(`\nwrote ${path.join(out, 'latency.svg')} and ${path.join(out, 'results.json')}`);
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
