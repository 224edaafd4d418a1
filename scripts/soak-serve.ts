/**
 * Stalled clients against `torch-early-exit serve` under a low file limit: the server runs as
 * its own process with `ulimit -n` NOFILE (1024); STALLED clients (1,000) each send headers and
 * half a body and then nothing; then GOOD clients (1,000) send a good /predict request each, all
 * at once, on fresh connections. Every good request must be answered or refused with a status
 * (200, or 503 at the connection cap): none may hang (60 s) or end without one (ECONNRESET).
 * The stalled ones must be answered too (408 at the request timeout, or 503). The server's RSS,
 * after 50 warm-up requests and again once every client has left, must agree within 10%.
 *
 *   npm run build:ts && node dist/scripts/soak-serve.js [--stalled 1000] [--good 1000] [--nofile 1024]
 *     [--request-timeout-ms 30000] [--json out.json]
 *
 * Exit code 1 when a good request hung or ended without a status, or RSS grew by more than 10%.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import type * as Lib from '../lib';
import { jsonFile, positiveInt } from './script-args';

const ROOT = path.join(__dirname, '..', '..');
const HANG_MS = 60000;

interface Options { stalled: number; good: number; nofile: number; requestTimeoutMs: number; json?: string }

function parseArgs(args: string[]): Options {
  const options: Options = { stalled: 1000, good: 1000, nofile: 1024, requestTimeoutMs: 30000 };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const value = args[++i];
    if (flag === '--stalled') options.stalled = positiveInt(flag, value);
    else if (flag === '--good') options.good = positiveInt(flag, value);
    else if (flag === '--nofile') options.nofile = positiveInt(flag, value);
    else if (flag === '--request-timeout-ms') options.requestTimeoutMs = positiveInt(flag, value);
    else if (flag === '--json') options.json = jsonFile(value);
    else throw new Error(`soak-serve: unknown argument '${flag}'`);
  }
  return options;
}

/** A checkpoint of the MNIST CNN with two exits, as `serve` takes it. */
function makeCheckpoint(dir: string): number[] {
  const lib = require('../lib') as typeof Lib;
  const { EarlyExitModel, jit, nn, torch, saveCheckpoint } = lib;
  torch.manualSeed(0);
  const model = new EarlyExitModel(jit.load(path.join(ROOT, 'test', 'fixtures', 'mnist_cnn.pt')), [
    ['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))],
    ['features2', nn.Sequential(nn.Flatten(), nn.Linear(3136, 10))],
  ]).eval();
  saveCheckpoint(dir, model, { extra: { serving: { inputShape: [1, 28, 28], policy: { criterion: 'entropy', thresholds: [1.5, 1.0] } } } });
  return Array.from(torch.randn([784]).data() as Float32Array);
}

/** The resident set of process `pid` in MB. */
function rssMb(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) / 1024 : NaN;
}

/** One request on a fresh connection: its status, or how it ended without one. */
function request(port: number, body: string): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => { req.destroy(); resolve('hang'); }, HANG_MS);
    const req = http.request({ port, host: '127.0.0.1', method: 'POST', path: '/predict', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => { clearTimeout(timer); resolve(String(res.statusCode)); });
      res.on('error', (error: NodeJS.ErrnoException) => { clearTimeout(timer); resolve(error.code ?? error.message); });
    });
    req.on('error', (error: NodeJS.ErrnoException) => { clearTimeout(timer); resolve(error.code ?? error.message); });
    req.end(body);
  });
}

/** A client that sends headers and half its body, then nothing: resolves with the status it was answered, or how it ended. */
function stall(port: number): { connected: Promise<void>; ended: Promise<string> } {
  const socket = net.connect(port, '127.0.0.1');
  let answer = '';
  let failure = '';
  const connected = new Promise<void>((resolve) => { socket.once('connect', () => resolve()); socket.once('error', () => resolve()); });
  const ended = new Promise<string>((resolve) => {
    const timer = setTimeout(() => { socket.destroy(); resolve('hang'); }, HANG_MS * 2);
    socket.on('data', (chunk) => { answer += chunk.toString(); });
    socket.on('error', (error: NodeJS.ErrnoException) => { failure = error.code ?? error.message; });
    socket.on('close', () => {
      clearTimeout(timer);
      const status = /^HTTP\/1\.1 (\d{3})/.exec(answer);
      resolve(status ? status[1] : failure || 'closed without a status');
    });
  });
  socket.write('POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000\r\n\r\n{"input": [0.5, ');
  return { connected, ended };
}

function tally(results: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const result of results) counts[result] = (counts[result] ?? 0) + 1;
  return counts;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-soak-serve-'));
  const sample = makeCheckpoint(path.join(scratch, 'checkpoint'));
  const body = JSON.stringify({ input: sample });
  let child: ChildProcess | undefined;
  try {
    child = spawn('bash', ['-c', `ulimit -n ${options.nofile} && exec "$0" "$@"`, process.execPath, path.join(ROOT, 'bin', 'torch-early-exit.js'),
      'serve', path.join(scratch, 'checkpoint'), '--port', '0', '--instances', '1', '--request-timeout-ms', String(options.requestTimeoutMs)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child!.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const found = /on http:\/\/[^:]+:(\d+)/.exec(out);
        if (found) resolve(Number(found[1]));
      });
      child!.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${out}`)));
    });
    const pid = child.pid!;
    const limits = fs.readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((line) => line.startsWith('Max open files'))!.replace(/\s+/g, ' ');
    console.log(`soak-serve: serve (pid ${pid}, ${limits}) on port ${port}; ${options.stalled} stalled clients, then ${options.good} good requests`);
    const warm = await Promise.all(Array.from({ length: 50 }, () => request(port, body)));
    const startMb = rssMb(pid);
    console.log(`warm-up: ${JSON.stringify(tally(warm))}; RSS ${startMb.toFixed(1)} MB`);

    const stalled = Array.from({ length: options.stalled }, () => stall(port));
    await Promise.all(stalled.map((client) => client.connected));
    const openFds = fs.readdirSync(`/proc/${pid}/fd`).length;
    const started = Date.now();
    const good = await Promise.all(Array.from({ length: options.good }, () => request(port, body)));
    const goodSeconds = (Date.now() - started) / 1000;
    const peakMb = rssMb(pid);
    console.log(`good requests: ${JSON.stringify(tally(good))} in ${goodSeconds.toFixed(1)} s (the server held ${openFds} descriptors once the stalled clients connected)`);
    const stalledResults = await Promise.all(stalled.map((client) => client.ended));
    console.log(`stalled clients: ${JSON.stringify(tally(stalledResults))} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const after = await Promise.all(Array.from({ length: 20 }, () => request(port, body)));
    const endMb = rssMb(pid);
    const growth = (endMb - startMb) / startMb;
    const unanswered = good.filter((result) => !/^\d{3}$/.test(result));
    const pass = unanswered.length === 0 && Math.abs(growth) <= 0.1 && after.every((result) => result === '200');
    console.log(`after: ${JSON.stringify(tally(after))}; RSS start ${startMb.toFixed(1)} MB, peak ${peakMb.toFixed(1)} MB, end ${endMb.toFixed(1)} MB ` +
      `(${(growth * 100).toFixed(1)}%)\n${pass ? 'PASS' : 'FAIL'}: ${unanswered.length} good requests without a status; RSS within 10%: ${Math.abs(growth) <= 0.1}`);
    if (options.json) {
      fs.writeFileSync(options.json, JSON.stringify({ options, limits, openFds, warm: tally(warm), good: tally(good), stalled: tally(stalledResults),
        after: tally(after), rssMb: { start: startMb, peak: peakMb, end: endMb }, pass }, null, 2));
    }
    process.exitCode = pass ? 0 : 1;
  } finally {
    child?.kill('SIGINT');
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((error) => { console.error(error); process.exit(2); });
