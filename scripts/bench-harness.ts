/**
 * The harness the benchmarks share: two sides of a comparison, each in its own process,
 * paired step by step (one timed step of one side, then one of the other, in turns), so
 * that whatever else the machine does hits both alike. Both processes get the same thread
 * settings and the same memory allocator settings, which the header prints.
 *
 * A benchmark script is also the program of its side processes: it calls `serveSide` first
 * thing, which in a side process serves the parent and never returns. A Python side is a
 * script that calls bench_side.py's `serve_side` the same way.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as os from 'os';
import * as readline from 'readline';
import { median, quantile, table } from './bench-stats';

/** A side as a benchmark script describes it: which factory builds it, with what. */
export interface SideSpec {
  factory: string;
  options?: Record<string, unknown>;
  /**
   * A side served by a Python script instead (scripts/bench_side.py speaks the same
   * protocol); `interpreter` defaults to $PYTHON or /usr/bin/python3.
   */
  python?: { script: string; interpreter?: string };
}

/** One side, built in its own process. */
export interface Side {
  /**
   * One call of what is measured; a timed step makes `repeat` of them. It may return the
   * milliseconds of its phases (forward, backward...), which the harness reports too.
   */
  step(): void | Phases | Promise<void | Phases>;
  /** The output of the step on the side's check input, flattened, to compare the sides. */
  output?(): number[] | Promise<number[]>;
  /** What runs, for the table (versions, thread settings). */
  describe?: string;
}

/** Milliseconds by phase of one step. */
export type Phases = Record<string, number>;

export type SideFactory = (options: Record<string, unknown>) => Side | Promise<Side>;

/**
 * The memory allocator of every side:
 * - 'as-installed': each side as its users get it: this library keeps freed large blocks in
 *   its CPU block cache; PyTorch and onnxruntime use glibc's malloc as installed.
 * - 'glibc': glibc's malloc as installed on both sides (the library's block cache off,
 *   TEE_CPU_CACHE_MB=0): large tensors come from a fresh mmap each time.
 * - 'tuned': glibc on both sides told to keep and reuse large blocks (MALLOC_* variables),
 *   the library's block cache off: the same memory behaviour on both sides.
 */
export type AllocatorSetting = 'as-installed' | 'glibc' | 'tuned';
export const ALLOCATOR_SETTINGS: AllocatorSetting[] = ['as-installed', 'glibc', 'tuned'];

/** How a benchmark's processes are set up: the same for every side. */
export interface Environment {
  /** Intra-op threads of every side (LibTorch, onnxruntime, OpenMP, OpenBLAS). */
  threads: number;
  allocator: AllocatorSetting;
}

const TUNED_GLIBC: Record<string, string> = {
  MALLOC_MMAP_THRESHOLD_: '4294967296',
  MALLOC_TRIM_THRESHOLD_: '4294967296',
  MALLOC_TOP_PAD_: '268435456',
};

/** Checks a command-line `--allocator` value. */
export function allocatorSetting(value: string | undefined, fallback: AllocatorSetting): AllocatorSetting {
  if (value === undefined) return fallback;
  if (!(ALLOCATOR_SETTINGS as string[]).includes(value)) {
    throw new Error(`--allocator is one of ${ALLOCATOR_SETTINGS.join(', ')}, got '${value}'`);
  }
  return value as AllocatorSetting;
}

/** The environment variables that set up a side process. */
export function sideEnvironment(environment: Environment): Record<string, string> {
  const threads = String(environment.threads);
  const env: Record<string, string> = { OMP_NUM_THREADS: threads, OPENBLAS_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
  if (environment.allocator !== 'as-installed') env.TEE_CPU_CACHE_MB = '0';
  if (environment.allocator === 'tuned') Object.assign(env, TUNED_GLIBC);
  return env;
}

/** The header line that states the environment. */
export function describeEnvironment(environment: Environment, placement?: string): string {
  const allocator = {
    'as-installed': 'memory as installed: torch-early-exit\'s CPU block cache on, glibc malloc as installed for the others',
    glibc: 'glibc malloc as installed on both sides (torch-early-exit\'s block cache off: TEE_CPU_CACHE_MB=0)',
    tuned: `glibc malloc tuned on both sides (${Object.entries(TUNED_GLIBC).map(([k, v]) => `${k}=${v}`).join(' ')}; ` +
      'torch-early-exit\'s block cache off)',
  }[environment.allocator];
  const pinned = placement ?? (SIDE_CPU === undefined ? 'sides not pinned' : `both sides pinned to CPU ${SIDE_CPU}`);
  return `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'unknown CPU'}; ${environment.threads} intra-op thread(s) per side; ${pinned}; ${allocator}`;
}

interface Request { id: number; type: 'setup' | 'step' | 'output'; spec?: SideSpec; repeat?: number }
interface Reply { id: number; ms?: number; phases?: Phases; output?: number[]; describe?: string; error?: string }

const CHILD_FLAG = 'TEE_BENCH_SIDE';

/**
 * Both sides run on the same CPU (the last one), so that neither gets a better core or a
 * warmer cache; the parent, which only waits, runs elsewhere. Undefined where taskset is missing.
 */
const SIDE_CPU: number | undefined = os.cpus().length > 1 && spawnSync('taskset', ['-c', '0', 'true']).status === 0
  ? os.cpus().length - 1 : undefined;

/**
 * In a side process (started by `runPairs`), serves the parent with `factories` and never
 * returns; in the parent, returns at once.
 */
export function serveSide(factories: Record<string, SideFactory>): void {
  if (process.env[CHILD_FLAG] !== '1') return;
  let side: Side | undefined;
  const answer = (reply: Reply) => process.send!(reply);
  process.on('message', async (request: Request) => {
    try {
      if (request.type === 'setup') {
        const factory = factories[request.spec!.factory];
        if (!factory) throw new Error(`no side factory '${request.spec!.factory}'`);
        side = await factory(request.spec!.options ?? {});
        answer({ id: request.id, describe: side.describe });
      } else if (request.type === 'step') {
        const repeat = request.repeat!;
        const phases: Phases = {};
        const started = process.hrtime.bigint();
        for (let i = 0; i < repeat; i++) {
          const stepPhases = await side!.step();
          for (const [name, ms] of Object.entries(stepPhases ?? {})) phases[name] = (phases[name] ?? 0) + ms / repeat;
        }
        answer({ id: request.id, ms: Number(process.hrtime.bigint() - started) / 1e6 / repeat, phases });
      } else {
        answer({ id: request.id, output: side!.output ? await side!.output() : undefined });
      }
    } catch (error) {
      answer({ id: request.id, error: (error as Error).stack ?? String(error) });
    }
  });
  process.on('disconnect', () => process.exit(0));
  // Keep the process alive while the parent talks to it.
  setInterval(() => undefined, 1 << 30);
}

/** A side process: a Node one over IPC, or a Python one over JSON lines on its stdin and stdout. */
class SideProcess {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (reply: Reply) => void; reject: (error: Error) => void }>();
  private stderr = '';

  constructor(script: string, env: Record<string, string>, private readonly spec: SideSpec) {
    const program = spec.python
      ? [spec.python.interpreter ?? process.env.PYTHON ?? '/usr/bin/python3', spec.python.script]
      : [process.execPath, script];
    const command = SIDE_CPU === undefined ? program : ['taskset', '-c', String(SIDE_CPU), ...program];
    const childEnv = { ...process.env, ...env, [CHILD_FLAG]: '1' };
    if (spec.python) {
      this.child = spawn(command[0], command.slice(1), { env: childEnv, stdio: ['pipe', 'pipe', 'pipe'] });
      readline.createInterface({ input: this.child.stdout! }).on('line', (line) => {
        // Anything else a Python library prints on stdout goes with its stderr.
        if (line.startsWith('{"id"')) this.receive(JSON.parse(line));
        else this.stderr += line + '\n';
      });
      this.child.stderr!.on('data', (chunk: Buffer) => { this.stderr += chunk.toString(); });
    } else {
      this.child = spawn(command[0], command.slice(1), { env: childEnv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      this.child.on('message', (reply: Reply) => this.receive(reply));
    }
    const fail = (why: string): void => {
      const error = new Error(`side process ${why}${this.stderr ? `; its stderr:\n${this.stderr}` : ''}`);
      for (const waiter of this.waiting.values()) waiter.reject(error);
      this.waiting.clear();
    };
    this.child.on('error', (error) => fail(`could not start: ${error.message}`));
    this.child.on('exit', (code, signal) => fail(`exited (${signal ?? code})`));
  }

  private receive(reply: Reply): void {
    const waiter = this.waiting.get(reply.id);
    this.waiting.delete(reply.id);
    if (reply.error) waiter?.reject(new Error(`side process: ${reply.error}`));
    else waiter?.resolve(reply);
  }

  request(type: Request['type'], repeat = 1): Promise<Reply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      const request: Request = { id, type, spec: type === 'setup' ? this.spec : undefined, repeat };
      if (this.spec.python) this.child.stdin!.write(JSON.stringify(request) + '\n');
      else this.child.send(request);
    });
  }

  close(): void {
    if (this.spec.python) this.child.stdin!.end();
    else this.child.disconnect();
  }
}

/** A comparison: side `a` against side `b`, paired step by step. */
export interface Pair {
  name: string;
  a: SideSpec;
  b: SideSpec;
  /** Steps of each side timed, after `warmup` untimed ones. */
  steps: number;
  warmup: number;
  /** Calls per step (default 1): a step of several short calls is less at the mercy of a single interruption. */
  repeat?: number;
  /**
   * The largest difference allowed between the sides' outputs, compared before the timed
   * steps and again after them; omitted: not compared.
   */
  tolerance?: number;
}

export interface PairResult {
  name: string;
  aMs: number[];
  bMs: number[];
  /** a / b, step by step. */
  ratios: number[];
  /** Largest absolute difference of the outputs, when compared (before and after the steps). */
  maxDifference?: number;
  /** Each phase's milliseconds, step by step, when the sides report phases. */
  aPhases: Record<string, number[]>;
  bPhases: Record<string, number[]>;
  aDescribe?: string;
  bDescribe?: string;
}

/**
 * Runs each pair in two fresh processes of `script` (the benchmark itself), taking turns
 * step by step; which side goes first alternates from step to step.
 */
export async function runPairs(script: string, pairs: Pair[], environment: Environment,
  progress: (line: string) => void = () => undefined): Promise<PairResult[]> {
  const results: PairResult[] = [];
  for (const pair of pairs) {
    const env = sideEnvironment(environment);
    const a = new SideProcess(script, env, pair.a);
    const b = new SideProcess(script, env, pair.b);
    try {
      const [setupA, setupB] = [await a.request('setup'), await b.request('setup')];
      const compare = async (when: string): Promise<number | undefined> => {
        if (pair.tolerance === undefined) return undefined;
        const [outA, outB] = [(await a.request('output')).output, (await b.request('output')).output];
        if (!outA || !outB || outA.length !== outB.length) {
          throw new Error(`${pair.name}: the sides' outputs cannot be compared (${outA?.length} and ${outB?.length} values)`);
        }
        // A loop, not Math.max(...): outputs can hold millions of values.
        let difference = 0;
        for (let i = 0; i < outA.length; i++) difference = Math.max(difference, Math.abs(outA[i] - outB[i]));
        if (!(difference <= pair.tolerance)) {
          throw new Error(`${pair.name}: the sides' outputs differ by ${difference} ${when}, more than ${pair.tolerance}`);
        }
        return difference;
      };
      const before = await compare('before the timed steps');
      const aMs: number[] = [];
      const bMs: number[] = [];
      const aPhases: Record<string, number[]> = {};
      const bPhases: Record<string, number[]> = {};
      for (let step = 0; step < pair.warmup + pair.steps; step++) {
        const order = step % 2 === 0 ? [a, b] : [b, a];
        const replies = new Map<SideProcess, Reply>();
        for (const side of order) replies.set(side, await side.request('step', pair.repeat ?? 1));
        if (step < pair.warmup) continue;
        for (const [side, ms, phases] of [[a, aMs, aPhases], [b, bMs, bPhases]] as const) {
          const reply = replies.get(side)!;
          ms.push(reply.ms!);
          for (const [name, value] of Object.entries(reply.phases ?? {})) (phases[name] ??= []).push(value);
        }
      }
      const after = await compare('after the timed steps');
      results.push({
        name: pair.name, aMs, bMs, ratios: aMs.map((ms, i) => ms / bMs[i]),
        maxDifference: before === undefined ? undefined : Math.max(before, after!),
        aPhases, bPhases, aDescribe: setupA.describe, bDescribe: setupB.describe,
      });
      progress(`${pair.name}: ${formatRatio(results[results.length - 1].ratios)}`);
    } finally {
      a.close();
      b.close();
    }
  }
  return results;
}

/** `1.23 (1.10–1.41)`: the median ratio and its 5–95% spread. */
export function formatRatio(ratios: number[]): string {
  return `${median(ratios).toFixed(2)} (${quantile(ratios, 0.05).toFixed(2)}–${quantile(ratios, 0.95).toFixed(2)})`;
}

/** One pair's phases: the median milliseconds of each on both sides, and their ratio. */
export function phaseTable(result: PairResult, aName: string, bName: string): string {
  const rows = [['phase', `${aName} ms`, `${bName} ms`, `${aName} / ${bName}`]];
  for (const name of Object.keys(result.aPhases)) {
    const [a, b] = [median(result.aPhases[name]), median(result.bPhases[name] ?? [NaN])];
    rows.push([name, a.toFixed(2), b.toFixed(2), b > 0.005 ? (a / b).toFixed(2) : '–']);
  }
  return table(rows, [false, true, true, true]);
}

/** The results as a text table: ratio with spread, and the two sides' medians (ms per call). */
export function ratioTable(results: PairResult[], aName: string, bName: string): string {
  const rows = [['comparison', `ratio ${aName} / ${bName} (5–95%)`, `${aName} ms`, `${bName} ms`, 'max |diff|']];
  for (const r of results) {
    rows.push([r.name, formatRatio(r.ratios), median(r.aMs).toFixed(3), median(r.bMs).toFixed(3),
      r.maxDifference === undefined ? '–' : r.maxDifference.toExponential(1)]);
  }
  return table(rows, [false, true, true, true, true]);
}
