/**
 * The fuzz suite: what an adversarial user can do to the library, each case run in a child
 * process so that a crash is counted, not suffered. The parent counts what every case
 * ended in (a clean Error, a success, a signal, a hang) and prints the table.
 *
 *   files     damaged model and torch.save files: bytes changed with the checksums left as
 *             they were (Python's zipfile judges, independently, which of them its own
 *             checksums and sizes show damaged), and valid archives with damaged content;
 *             a file that loads must give the undamaged file's output, bit for bit
 *   checkpoints  damaged checkpoint folders (saveCheckpoint's, with an optimizer): one file
 *             changed as above, its weights' bytes flipped in a valid archive, or checkpoint.json
 *             damaged (bytes, or a value changed in valid JSON); one that loads must give the
 *             same outputs and optimizer state
 *   inputs    bad arguments to the public functions
 *   workers   worker_threads terminated in the middle of native work
 *   writes    saves that fail on a full disk (a small tmpfs; root only), over good files
 *
 *   npm run build:ts && node dist/scripts/fuzz.js [--seed N] [--files 1000] [--inputs 300]
 *     [--checkpoints 180] [--workers 100] [--writes 24] [--json out.json] [--replay files:17] [--keep DIR]
 *     [--worker-mode MODE]   (npm run soak:load: 1,000 workers terminated during jit.load)
 *
 * Exit code 1 when any case crashed, hung, damaged a previous file or loaded a damaged file
 * silently. Every case is replayable alone from the seed and its id (--replay KIND:ID).
 */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createInterface } from 'readline';
import { Worker } from 'worker_threads';
import type * as Lib from '../lib';
import { jsonFile, positiveInt } from './script-args';

type Kind = 'files' | 'checkpoints' | 'inputs' | 'workers' | 'writes';
const KINDS: Kind[] = ['files', 'checkpoints', 'inputs', 'workers', 'writes'];
const ROOT = path.join(__dirname, '..', '..');
const FIXTURES = path.join(ROOT, 'test', 'fixtures');
/** A case that says nothing for this long is hung. */
const HANG_MS = 30000;

/** What one case ended in. */
interface Outcome {
  id: number;
  result: 'error' | 'ok' | 'signal' | 'hang' | 'silent-damage' | 'wrong-output' | 'previous-damaged' | 'leftover' | 'unclear-error' | 'not-an-error';
  detail: string;
}

interface Options {
  seed: number;
  /** A folder to keep the damaged files in, for a replay to look at. */
  keep?: string;
  counts: Record<Kind, number>;
  json?: string;
  replay?: { kind: Kind; id: number };
  /** Only this mode of the worker cases (`--worker-mode load`: the soak of terminations during jit.load). */
  workerMode?: (typeof WORKER_MODES)[number];
}

/** A small deterministic generator: the same seed and case id give the same case. */
function random(seed: number, id: number): () => number {
  let state = (seed * 2654435761 + id * 40503 + 1) >>> 0 || 1;
  return () => {
    state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
    return state / 4294967296;
  };
}

function pick<T>(next: () => number, items: readonly T[]): T { return items[Math.floor(next() * items.length)]; }

// ---------------------------------------------------------------------------------------
// The child: runs cases of one kind, printing `start ID` and `done ID RESULT DETAIL`.

/** LibTorch internals a user cannot act on: an error whose first line is one of these failed us. */
const UNCLEAR = [/Argument passed to at\(\) was not in the map/, /_M_range_check/, /please report a bug/i, /^\s*$/,
  /^cannot load TorchScript model '[^']*': *$/, /Cannot read properties of/, /is not a function$/, /^forward: The following operation failed/];

function classifyError(thrown: unknown): Pick<Outcome, 'result' | 'detail'> {
  const isError = thrown !== null && typeof thrown === 'object' && typeof (thrown as Error).message === 'string';
  if (!isError) return { result: 'not-an-error', detail: String(thrown) };
  const first = (thrown as Error).message.split('\n')[0];
  // LibTorch's own words may follow, quoted, once the line has said what went wrong.
  const said = first.split(' (LibTorch: ')[0];
  return { result: UNCLEAR.some((pattern) => pattern.test(said)) ? 'unclear-error' : 'error', detail: first.slice(0, 240) };
}

async function runChild(kind: Kind, jobFile: string): Promise<void> {
  const job = JSON.parse(fs.readFileSync(jobFile, 'utf8')) as { seed: number; cases: Array<Record<string, unknown> & { id: number }> };
  const lib = require('../lib') as typeof Lib;
  lib.torch.setNumThreads(1);
  const run = { files: fileCase, checkpoints: checkpointCase, inputs: inputCase, workers: workerCase, writes: writeCase }[kind];
  const state = new Map<string, unknown>();
  for (const job_ of job.cases) {
    process.stdout.write(`start ${job_.id}\n`);
    let outcome: Pick<Outcome, 'result' | 'detail'>;
    try {
      outcome = await run(lib, job.seed, job_, state);
    } catch (thrown) {
      outcome = classifyError(thrown);
    }
    process.stdout.write(`done ${job_.id} ${outcome.result} ${JSON.stringify(outcome.detail)}\n`);
  }
}

/** A damaged file: loaded and run, the output compared with the undamaged file's. */
async function fileCase(lib: typeof Lib, _seed: number, job: Record<string, unknown>, state: Map<string, unknown>): Promise<Pick<Outcome, 'result' | 'detail'>> {
  const base = job.base as string;
  const damaged = job.damaged as boolean;
  const isModel = base.endsWith('_scripted.pt') || base.endsWith('_cnn.pt');
  const read = (file: string): number[] => {
    if (!isModel) {
      const loaded = lib.torch.load(file) as Record<string, Lib.Tensor>;
      return Object.keys(loaded).sort().flatMap((key) => Array.from(loaded[key].data() as ArrayLike<number>, Number));
    }
    const model = lib.jit.load(file);
    const input = base.includes('mnist') ? lib.torch.ones([1, 1, 28, 28]) : lib.torch.ones([1, 3, 32, 32]);
    const output = lib.torch.noGrad(() => model.forward(input));
    const tensors = (Array.isArray(output) ? output : [output]) as Lib.Tensor[];
    return tensors.flatMap((tensor) => Array.from(tensor.data() as ArrayLike<number>, Number));
  };
  if (!state.has(base)) state.set(base, read(base));
  const expected = state.get(base) as number[];
  const actual = read(job.path as string);
  const same = actual.length === expected.length && actual.every((value, i) => Object.is(value, expected[i]));
  if (damaged) return { result: 'silent-damage', detail: `${job.mutation}: loaded although its checksums show damage` };
  // A valid archive whose content was changed and which still loads must give the same output:
  // a different one is a wrong answer nobody was told about.
  if (!same) return { result: 'wrong-output', detail: `${job.mutation}: loaded and ran with a different output and no error` };
  return { result: 'ok', detail: `${job.mutation}: same output` };
}

/** A damaged checkpoint folder: loaded, and its outputs and optimizer state compared with the undamaged one's. */
async function checkpointCase(lib: typeof Lib, _seed: number, job: Record<string, unknown>, state: Map<string, unknown>): Promise<Pick<Outcome, 'result' | 'detail'>> {
  const read = (dir: string): number[] => {
    const loaded = lib.loadCheckpoint(dir);
    const outputs = lib.torch.noGrad(() => loaded.model.eval().forward(lib.torch.ones([1, 3, 32, 32])));
    const optimizer = Object.values(loaded.optimizerState?.state ?? {}).flatMap((entry) => Object.values(entry));
    return [...outputs.flatMap((tensor) => Array.from(tensor.data() as Float32Array)),
      ...optimizer.flatMap((value) => (typeof value === 'number' ? [value] : Array.from(value.data() as Float32Array)))];
  };
  const base = job.base as string;
  if (!state.has(base)) state.set(base, read(base));
  const expected = state.get(base) as number[];
  const actual = read(job.path as string);
  const same = actual.length === expected.length && actual.every((value, i) => Object.is(value, expected[i]));
  if (!same) return { result: 'wrong-output', detail: `${job.mutation}: loaded and ran with a different output and no error` };
  return { result: 'ok', detail: `${job.mutation}: same output` };
}

/** One call of a public function with generated arguments. */
async function inputCase(lib: typeof Lib, seed: number, job: Record<string, unknown>, state: Map<string, unknown>): Promise<Pick<Outcome, 'result' | 'detail'>> {
  const { jit, nn, torch, EarlyExitModel } = lib;
  if (!state.has('model')) {
    state.set('model', jit.load(path.join(FIXTURES, 'resnet20_scripted.pt')));
    state.set('ee', new EarlyExitModel(jit.load(path.join(FIXTURES, 'resnet20_scripted.pt')),
      [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]));
    state.set('tmp', fs.mkdtempSync(path.join(os.tmpdir(), 'tee-fuzz-inputs-')));
  }
  const model = state.get('model') as Lib.ScriptModule;
  const ee = state.get('ee') as Lib.EarlyExitModel;
  const next = random(seed, job.id as number);
  const disposed = torch.zeros([2]);
  disposed.dispose();
  const values: Array<() => unknown> = [
    () => undefined, () => null, () => NaN, () => Infinity, () => -1, () => 0, () => 1.5, () => 2 ** 40, () => -(2 ** 62),
    () => '', () => 'layer1', () => 'nope', () => 'cuda:7', () => Symbol('s'), () => ({}), () => ({ a: 1 }), () => [],
    () => [[]], () => [1, 'a'], () => [-1, 3], () => [2 ** 62, 2 ** 62], () => () => 1, () => 1n, () => -(2n ** 70n),
    () => new Float32Array(3), () => Buffer.from('x'), () => torch.zeros([0]), () => torch.zeros([1, 3, 32, 32], { dtype: 'float64' }),
    () => torch.zeros([1, 3, 32, 32], { dtype: 'int64' }), () => disposed, () => torch.randn([3, 32, 32]),
    () => torch.randn([2, 3, 32, 32]), () => torch.full([1, 3, 32, 32], NaN), () => torch.randn([1, 1, 28, 28]),
    () => ({ criterion: 'entropy', thresholds: [NaN] }), () => ({ criterion: 'entropy', thresholds: [0.5], perSample: 'yes' }),
    () => nn.Linear(3, 2), () => model.getModule('layer1'), () => new Map(), () => new Date(0),
  ];
  const value = () => pick(next, values)();
  const tmp = state.get('tmp') as string;
  const calls: Array<[string, () => unknown]> = [
    ['forward', () => model.forward(value())],
    ['forward(a, b)', () => model.forward(value(), value())],
    ['forwardAsync', () => model.forwardAsync(value())],
    ['callMethod', () => model.callMethod(value() as string, value())],
    ['getModule', () => model.getModule(value() as string)],
    ['registerForwardHook', () => {
      const handle = model.getModule('layer1').registerForwardHook(value() as never);
      try { return model.forward(torch.randn([1, 3, 32, 32])); } finally { handle.remove(); }
    }],
    ['to', () => model.to(value() as string)],
    ['jit.load', () => jit.load(value() as string, value() as never)],
    ['torch.tensor', () => torch.tensor(value() as never, value() as never)],
    ['torch.zeros', () => torch.zeros(value() as never, value() as never)],
    ['torch.randn', () => torch.randn(value() as never)],
    ['torch.arange', () => torch.arange(value() as number, value() as number, value() as number)],
    ['torch.manualSeed', () => torch.manualSeed(value() as number)],
    ['torch.setNumThreads', () => { try { torch.setNumThreads(value() as number); } finally { torch.setNumThreads(1); } }],
    ['torch.save', () => torch.save(value() as never, path.join(tmp, 'saved.pt'))],
    ['torch.load', () => torch.load(value() as string)],
    ['forwardEarlyExit(x, policy)', () => ee.forwardEarlyExit(torch.randn([2, 3, 32, 32]), value() as never)],
    ['forwardEarlyExit(input)', () => ee.forwardEarlyExit(value() as never, { criterion: 'entropy', thresholds: [0.5] })],
    ['forwardEarlyExit(thresholds)', () => ee.forwardEarlyExit(torch.randn([2, 3, 32, 32]), { criterion: pick(next, ['entropy', 'maxProbability', 'margin', 'patience', 'x']) as never, thresholds: [value() as number], perSample: next() < 0.5 })],
    ['nn.Linear', () => nn.Linear(value() as number, value() as number).forward(value() as never)],
    ['nn.Conv2d', () => nn.Conv2d(value() as number, value() as number, value() as number)],
    ['nn.Sequential', () => nn.Sequential(value() as never, value() as never).forward(torch.randn([1, 3]))],
    ['Tensor.add', () => torch.randn([2, 3]).add(value() as never)],
    ['Tensor.view', () => torch.randn([2, 3]).view(value() as never)],
    ['Tensor.matmul', () => torch.randn([2, 3]).matmul(value() as never)],
    ['Tensor.softmax', () => torch.randn([2, 3]).softmax(value() as number)],
    ['Tensor.to', () => torch.randn([2, 3]).to(value() as never)],
    ['Tensor.item', () => torch.randn(value() as never).item()],
  ];
  const [name, call] = pick(next, calls);
  try {
    await call();
    return { result: 'ok', detail: name };
  } catch (thrown) {
    const outcome = classifyError(thrown);
    return { ...outcome, detail: `${name}: ${outcome.detail}` };
  }
}

const WORKER_MODES = ['async', 'sync', 'hookAsync', 'earlyExitAsync', 'load', 'exit', 'post'] as const;

/** A worker that loops on native work, terminated after a random delay. */
async function workerCase(_lib: typeof Lib, seed: number, job: Record<string, unknown>): Promise<Pick<Outcome, 'result' | 'detail'>> {
  const next = random(seed, job.id as number);
  const only = job.mode as (typeof WORKER_MODES)[number] | undefined;
  const mode = only ?? pick(next, WORKER_MODES);
  const delay = Math.floor(next() * 120);
  const library = JSON.stringify(path.join(ROOT, 'dist', 'lib'));
  const model = JSON.stringify(path.join(FIXTURES, 'resnet20_scripted.pt'));
  const worker = new Worker(`
    const { parentPort } = require('worker_threads');
    const { jit, nn, torch, EarlyExitModel } = require(${library});
    const model = jit.load(${model});
    const ee = new EarlyExitModel(jit.load(${model}), [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
    const x = torch.randn([16, 3, 32, 32]);
    const mode = ${JSON.stringify(mode)};
    if (mode === 'hookAsync') model.getModule('layer1').registerForwardHook(() => {});
    // A timer cannot fire inside a sync forward: it arms the exit, and the forward's own hook
    // on 'layer1' calls process.exit in the middle of native work.
    let armed = false;
    if (mode === 'exit') {
      setTimeout(() => { armed = true; }, 3);
      model.getModule('layer1').registerForwardHook(() => { if (armed) process.exit(0); });
    }
    parentPort.postMessage('ready');
    (async () => {
      for (;;) {
        if (mode === 'async' || mode === 'hookAsync') await model.forwardAsync(x);
        else if (mode === 'earlyExitAsync') await ee.forwardEarlyExitAsync(x, { criterion: 'entropy', thresholds: [0.5], perSample: true });
        else if (mode === 'sync') model.forward(x);
        else if (mode === 'load') jit.load(${model});
        else if (mode === 'exit') { model.forward(x); await new Promise((r) => setImmediate(r)); }
        else { const data = model.forward(x).data(); parentPort.postMessage(data.buffer, [data.buffer]); }
      }
    })();`, { eval: true });
  const errors: string[] = [];
  worker.on('error', (error) => errors.push(error.message));
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('exit', () => resolve());
    worker.once('error', reject);
  });
  await new Promise((resolve) => setTimeout(resolve, delay));
  await worker.terminate();
  return { result: 'ok', detail: `${mode} terminated after ${delay} ms${errors.length ? ` (worker error: ${errors[0]})` : ''}` };
}

/** A save that fails on a full disk over a good previous file; the previous must stay whole. */
async function writeCase(lib: typeof Lib, seed: number, job: Record<string, unknown>): Promise<Pick<Outcome, 'result' | 'detail'>> {
  const { jit, nn, torch, EarlyExitModel, saveCheckpoint, loadCheckpoint } = lib;
  const disk = job.disk as string;
  const next = random(seed, job.id as number);
  const what = pick(next, ['ScriptModule.save', 'torch.save', 'saveCheckpoint'] as const);
  for (const entry of fs.readdirSync(disk)) fs.rmSync(path.join(disk, entry), { recursive: true, force: true });
  const model = jit.load(path.join(FIXTURES, 'resnet20_scripted.pt'));
  const target = path.join(disk, what === 'saveCheckpoint' ? 'checkpoint' : 'file.pt');
  const ee = () => new EarlyExitModel(model, [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
  const save = () => {
    if (what === 'ScriptModule.save') model.save(target);
    else if (what === 'torch.save') torch.save({ w: torch.randn([300, 1000]) }, target);
    else saveCheckpoint(target, ee());
  };
  const snapshot = (): string => {
    if (what === 'ScriptModule.save') return JSON.stringify(Array.from((jit.load(target).forward(torch.ones([1, 3, 32, 32])) as Lib.Tensor).data() as Float32Array));
    if (what === 'torch.save') return JSON.stringify(Array.from((torch.load(target).w as Lib.Tensor).data() as Float32Array));
    return JSON.stringify(loadCheckpoint(target).model.exitPoints) + fs.readdirSync(target).sort().join(',');
  };
  save();
  const before = snapshot();
  // Fill the disk, leaving a random few KB so that the failure comes at a different point each time.
  const filler = path.join(disk, 'filler');
  const fd = fs.openSync(filler, 'w');
  const block = Buffer.alloc(64 * 1024, 1);
  try { for (;;) fs.writeSync(fd, block); } catch { /* full */ } finally { fs.closeSync(fd); }
  fs.truncateSync(filler, Math.max(0, fs.statSync(filler).size - Math.floor(next() * 512) * 1024));
  let failure: unknown;
  try { save(); } catch (error) { failure = error; }
  fs.rmSync(filler);
  const leftovers = fs.readdirSync(disk).filter((entry) => entry !== path.basename(target));
  let after: string;
  try { after = snapshot(); } catch (error) { return { result: 'previous-damaged', detail: `${what}: ${(error as Error).message.split('\n')[0]}` }; }
  if (after !== before) return { result: 'previous-damaged', detail: `${what}: the previous file changed` };
  if (leftovers.length > 0) return { result: 'leftover', detail: `${what}: left ${leftovers.join(', ')}` };
  if (failure === undefined) return { result: 'ok', detail: `${what}: fit in the space left` };
  const outcome = classifyError(failure);
  return { ...outcome, detail: `${what}: ${outcome.detail}` };
}

// ---------------------------------------------------------------------------------------
// The parent: makes the cases, runs them in children, restarts a child after a crash.

/** Runs `cases` of `kind` in child processes; a child that dies takes only its current case with it. */
async function runCases(kind: Kind, seed: number, cases: Array<Record<string, unknown> & { id: number }>, scratch: string): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  let remaining = cases;
  while (remaining.length > 0) {
    const jobFile = path.join(scratch, `${kind}-job.json`);
    fs.writeFileSync(jobFile, JSON.stringify({ seed, cases: remaining }));
    const child: ChildProcess = spawn(process.execPath, [__filename, '--child', kind, jobFile],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OMP_NUM_THREADS: '1' } });
    let current: number | undefined;
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => { stderr = (stderr + chunk.toString()).slice(-20000); });
    let watchdog: NodeJS.Timeout | undefined;
    let hung = false;
    const arm = () => {
      if (watchdog) clearTimeout(watchdog);
      watchdog = setTimeout(() => { hung = true; child.kill('SIGKILL'); }, HANG_MS);
    };
    arm();
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      const [word, id, result, ...detail] = line.split(' ');
      if (word === 'start') { current = Number(id); arm(); }
      if (word === 'done') {
        outcomes.push({ id: Number(id), result: result as Outcome['result'], detail: JSON.parse(detail.join(' ')) as string });
        current = undefined;
      }
    });
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
    if (watchdog) clearTimeout(watchdog);
    const finished = new Set(outcomes.map((outcome) => outcome.id));
    if (current !== undefined) {
      // The line that says why (Node's failed CHECK, a C++ exception, a fatal error) rather than the last frames of a stack.
      const lines = stderr.trim().split('\n');
      const cause = lines.filter((line) => /Assertion|FATAL|terminate called|what\(\)|CHECK|Error:/.test(line)).slice(0, 2);
      const detail = hung ? `no answer in ${HANG_MS / 1000} s` : `${signal ?? `exit code ${code}`}: ${(cause.length ? cause : lines.slice(-2)).join(' | ')}`;
      outcomes.push({ id: current, result: hung ? 'hang' : 'signal', detail });
      finished.add(current);
    } else if (code !== 0 && remaining.every((job) => !finished.has(job.id))) {
      throw new Error(`fuzz: the ${kind} child failed before its first case (${signal ?? code}): ${stderr}`);
    }
    remaining = remaining.filter((job) => !finished.has(job.id));
  }
  return outcomes;
}

const FILE_BASES = ['resnet20_scripted.pt', 'containers_scripted.pt', 'mnist_cnn.pt'];

/** How a file is damaged (see scripts/fuzz_files.py): its bytes with the checksums left, or one entry rewritten validly. */
function family(draw: number): 'bytes' | 'content' | 'storage' | 'pickle' {
  return draw < 0.55 ? 'bytes' : draw < 0.7 ? 'content' : draw < 0.85 ? 'storage' : 'pickle';
}

async function fuzzFiles(options: Options, scratch: string, ids: number[]): Promise<Outcome[]> {
  // A torch.save file written by this library, the fourth base.
  const lib = require('../lib') as typeof Lib;
  const tensors = path.join(scratch, 'tensors.pt');
  lib.torch.manualSeed(options.seed);
  lib.torch.save({ weight: lib.torch.randn([64, 32]), bias: lib.torch.arange(32, undefined, 1, { dtype: 'float32' }) }, tensors);
  const bases = [...FILE_BASES.map((name) => path.join(FIXTURES, name)), tensors];
  const outcomes: Outcome[] = [];
  // Made, judged and run a batch at a time, so that the scratch folder stays small.
  for (let start = 0; start < ids.length; start += 100) {
    const batch = ids.slice(start, start + 100);
    const folder = fs.mkdtempSync(path.join(scratch, 'files-'));
    const job = {
      seed: options.seed, out: folder,
      cases: batch.map((id) => { const next = random(options.seed, id); return { id, base: pick(next, bases), family: family(next()) }; }),
    };
    fs.writeFileSync(path.join(folder, 'job.json'), JSON.stringify(job));
    const made = JSON.parse(execFileSync('/usr/bin/python3', [path.join(ROOT, 'scripts', 'fuzz_files.py'), path.join(folder, 'job.json')],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })) as Record<string, { path: string; mutation: string; damaged: boolean }>;
    const cases = job.cases.map((c) => ({ ...c, ...made[String(c.id)] }));
    outcomes.push(...await runCases('files', options.seed, cases, scratch));
    if (options.keep) {
      fs.mkdirSync(options.keep, { recursive: true });
      for (const c of cases) fs.copyFileSync(c.path, path.join(options.keep, `${path.basename(c.path, '.pt')}-${c.mutation.replace(/[^\w.-]+/g, '_')}.pt`));
    }
    fs.rmSync(folder, { recursive: true, force: true });
  }
  return outcomes;
}

/** A value changed in valid JSON: a number, a string, a boolean, or a key removed, somewhere in `value`. */
function mutateJson(value: unknown, next: () => number): { value: unknown; how: string } {
  const paths: Array<Array<string | number>> = [];
  const walk = (node: unknown, at: Array<string | number>) => {
    if (at.length > 0) paths.push(at);
    if (node && typeof node === 'object') for (const [key, child] of Object.entries(node)) walk(child, [...at, Array.isArray(node) ? Number(key) : key]);
  };
  walk(value, []);
  const target = pick(next, paths);
  const parent = target.slice(0, -1).reduce((node: any, key) => node[key], value as any);
  const key = target[target.length - 1];
  const old = parent[key];
  if (typeof old === 'number') parent[key] = pick(next, [old + 1, old - 1, old * 2, 0, -old, old + 0.5]);
  else if (typeof old === 'string') parent[key] = old.length > 0 ? old.slice(0, -1) + String.fromCharCode(old.charCodeAt(old.length - 1) ^ 1) : 'x';
  else if (typeof old === 'boolean') parent[key] = !old;
  else if (Array.isArray(parent)) parent.splice(Number(key), 1);
  else delete parent[key];
  return { value, how: `json:${target.join('.')}` };
}

/** Damaged copies of one checkpoint folder, one changed file each. */
async function fuzzCheckpoints(options: Options, scratch: string, ids: number[]): Promise<Outcome[]> {
  const lib = require('../lib') as typeof Lib;
  const { nn, optim, torch, EarlyExitModel, jit, saveCheckpoint } = lib;
  torch.manualSeed(options.seed);
  const model = new EarlyExitModel(jit.load(path.join(FIXTURES, 'resnet20_scripted.pt')),
    [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
  const optimizer = new optim.SGD(model.parameters(), { lr: 0.01, momentum: 0.9 });
  const outputs = model.forward(torch.randn([2, 3, 32, 32]));
  outputs.reduce((sum, output) => sum.add(output.sum()), torch.zeros([])).backward();
  optimizer.step();
  const base = path.join(scratch, 'base-checkpoint');
  saveCheckpoint(base, model, { optimizer, epoch: 3, extra: { note: 'fuzz' } });
  const files = fs.readdirSync(base).sort();
  const outcomes: Outcome[] = [];
  for (let start = 0; start < ids.length; start += 60) {
    const folder = fs.mkdtempSync(path.join(scratch, 'checkpoints-'));
    const cases = ids.slice(start, start + 60).map((id) => {
      const next = random(options.seed, id);
      const file = pick(next, files);
      const dir = path.join(folder, `case-${id}`);
      fs.cpSync(base, dir, { recursive: true });
      return { id, next, file, dir, base };
    });
    // The .pt files are damaged by fuzz_files.py, as in `files`, plus flipped weights.
    const archives = cases.filter((c) => c.file.endsWith('.pt')).map((c) => {
      const draw = c.next();
      return { id: c.id, base: path.join(base, c.file), family: draw < 0.2 ? 'weights' : family(c.next()) };
    });
    fs.writeFileSync(path.join(folder, 'job.json'), JSON.stringify({ seed: options.seed, out: folder, cases: archives }));
    const made = JSON.parse(execFileSync('/usr/bin/python3', [path.join(ROOT, 'scripts', 'fuzz_files.py'), path.join(folder, 'job.json')],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 })) as Record<string, { path: string; mutation: string }>;
    const jobs = cases.map((c) => {
      const target = path.join(c.dir, c.file);
      let mutation: string;
      if (made[String(c.id)]) {
        fs.copyFileSync(made[String(c.id)].path, target);
        mutation = `${c.file} ${made[String(c.id)].mutation}`;
      } else if (c.next() < 0.5) {
        const { value, how } = mutateJson(JSON.parse(fs.readFileSync(target, 'utf8')), c.next);
        fs.writeFileSync(target, JSON.stringify(value, null, 2));
        mutation = how;
      } else {
        const bytes = Buffer.from(fs.readFileSync(target));
        const at = Math.floor(c.next() * bytes.length);
        bytes[at] ^= 1 + Math.floor(c.next() * 255);
        fs.writeFileSync(target, bytes);
        mutation = `checkpoint.json flip at ${at}`;
      }
      return { id: c.id, base: c.base, path: c.dir, mutation };
    });
    outcomes.push(...await runCases('checkpoints', options.seed, jobs, scratch));
    fs.rmSync(folder, { recursive: true, force: true });
  }
  return outcomes;
}

/** A small tmpfs for the full-disk cases, or the reason there is none. */
function mountSmallDisk(scratch: string): { disk?: string; reason?: string } {
  const disk = path.join(scratch, 'disk');
  fs.mkdirSync(disk);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', disk], { stdio: 'pipe' });
    return { disk };
  } catch (error) {
    return { reason: `cannot mount a tmpfs (${(error as Error).message.split('\n')[0]}); the full-disk cases need root` };
  }
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-fuzz-'));
  console.log(`fuzz: seed ${options.seed} (replay one case with --seed ${options.seed} --replay KIND:ID)`);
  const table: Array<{ kind: Kind; cases: number; counts: Record<string, number>; note?: string }> = [];
  const bad: Outcome[] = [];
  let disk: string | undefined;
  try {
    for (const kind of KINDS) {
      let ids = Array.from({ length: options.counts[kind] }, (_, i) => i);
      if (options.replay) ids = options.replay.kind === kind ? [options.replay.id] : [];
      if (ids.length === 0) continue;
      let outcomes: Outcome[];
      let note: string | undefined;
      const started = Date.now();
      if (kind === 'files') {
        outcomes = await fuzzFiles(options, scratch, ids);
      } else if (kind === 'checkpoints') {
        outcomes = await fuzzCheckpoints(options, scratch, ids);
      } else if (kind === 'writes') {
        const mounted = mountSmallDisk(scratch);
        disk = mounted.disk;
        if (!disk) { table.push({ kind, cases: 0, counts: {}, note: `skipped: ${mounted.reason}` }); console.log(`writes: skipped: ${mounted.reason}`); continue; }
        outcomes = await runCases(kind, options.seed, ids.map((id) => ({ id, disk })), scratch);
      } else {
        outcomes = await runCases(kind, options.seed, ids.map((id) => ({ id, ...(kind === 'workers' && options.workerMode ? { mode: options.workerMode } : {}) })), scratch);
      }
      note = `${((Date.now() - started) / 1000).toFixed(0)} s`;
      const counts: Record<string, number> = {};
      for (const outcome of outcomes) {
        counts[outcome.result] = (counts[outcome.result] ?? 0) + 1;
        if (!['error', 'ok'].includes(outcome.result)) bad.push(outcome);
        if (options.replay) console.log(`${kind}:${outcome.id} ${outcome.result} ${outcome.detail}`);
      }
      table.push({ kind, cases: outcomes.length, counts, note });
      console.log(`${kind.padEnd(8)} ${String(outcomes.length).padStart(5)} cases  ` +
        Object.entries(counts).map(([result, count]) => `${result} ${count}`).join(', ') + `  (${note})`);
      for (const outcome of outcomes.filter((o) => !['error', 'ok'].includes(o.result)).slice(0, 10)) {
        console.log(`  ${kind}:${outcome.id} ${outcome.result}: ${outcome.detail}`);
      }
    }
  } finally {
    if (disk) try { execFileSync('umount', [disk], { stdio: 'pipe' }); } catch { /* reported by the next run's mount */ }
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  const totals: Record<string, number> = {};
  for (const row of table) for (const [result, count] of Object.entries(row.counts)) totals[result] = (totals[result] ?? 0) + count;
  console.log(`fuzz: ${Object.entries(totals).map(([result, count]) => `${result} ${count}`).join(', ')}`);
  if (options.json) fs.writeFileSync(options.json, JSON.stringify({ seed: options.seed, table, totals, bad }, null, 2));
  process.exitCode = bad.length > 0 ? 1 : 0;
}

function parseArgs(args: string[]): Options {
  const options: Options = { seed: Math.floor(Math.random() * 1e9), counts: { files: 1000, checkpoints: 180, inputs: 300, workers: 100, writes: 24 } };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const value = args[++i];
    const kind = flag.slice(2) as Kind;
    if (KINDS.includes(kind)) options.counts[kind] = value === '0' ? 0 : positiveInt(flag, value);
    else if (flag === '--seed') options.seed = positiveInt(flag, value);
    else if (flag === '--json') options.json = jsonFile(value);
    else if (flag === '--keep') options.keep = value;
    else if (flag === '--worker-mode') {
      if (!(WORKER_MODES as readonly string[]).includes(value)) throw new Error(`--worker-mode needs one of ${WORKER_MODES.join(', ')}`);
      options.workerMode = value as (typeof WORKER_MODES)[number];
    }
    else if (flag === '--replay') {
      const [replayKind, id] = (value ?? '').split(':');
      if (!KINDS.includes(replayKind as Kind)) throw new Error(`--replay needs KIND:ID with KIND one of ${KINDS.join(', ')}`);
      options.replay = { kind: replayKind as Kind, id: Number(id) };
    } else throw new Error(`fuzz: unknown argument '${flag}'`);
  }
  return options;
}

if (process.argv[2] === '--child') {
  runChild(process.argv[3] as Kind, process.argv[4]).then(() => process.exit(0), (error) => {
    console.error(error);
    process.exit(3);
  });
} else {
  main().catch((error) => { console.error(error); process.exit(2); });
}
