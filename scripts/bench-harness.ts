/**
 * The harness the benchmarks share: two sides of a comparison, each in its own process,
 * paired step by step (one timed step of one side, then one of the other, in turns), so
 * that whatever else the machine does hits both alike. Both processes get the same thread
 * settings and the same memory allocator settings, which the header prints.
 *
 * A benchmark script is also the program of its side processes: it calls `serveSide` first
 * thing, which in a side process serves the parent and never returns.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as os from 'os';
import { median, quantile, table } from './bench-stats';

/** A side as a benchmark script describes it: which factory builds it, with what. */
export interface SideSpec {
  factory: string;
  options?: Record<string, unknown>;
}

/** One side, built in its own process. */
export interface Side {
  /** One call of what is measured; a timed step makes `repeat` of them. */
  step(): void | Promise<void>;
  /** The output of the step on the side's check input, flattened, to compare the sides. */
  output?(): number[] | Promise<number[]>;
  /** What runs, for the table (versions, thread settings). */
  describe?: string;
}

export type SideFactory = (options: Record<string, unknown>) => Side | Promise<Side>;

/** How a benchmark's processes are set up: the same for every side. */
export interface Environment {
  /** Intra-op threads of every side (LibTorch, onnxruntime, OpenMP, OpenBLAS). */
  threads: number;
  /** 'default': glibc as installed; 'tuned': glibc keeps and reuses large blocks (no mmap per tensor). */
  allocator: 'default' | 'tuned';
}

const TUNED_GLIBC: Record<string, string> = {
  MALLOC_MMAP_THRESHOLD_: '4294967296',
  MALLOC_TRIM_THRESHOLD_: '4294967296',
  MALLOC_TOP_PAD_: '268435456',
};

/** The environment variables that set up a side process. */
export function sideEnvironment(environment: Environment): Record<string, string> {
  const threads = String(environment.threads);
  const env: Record<string, string> = { OMP_NUM_THREADS: threads, OPENBLAS_NUM_THREADS: threads, MKL_NUM_THREADS: threads };
  if (environment.allocator === 'tuned') Object.assign(env, TUNED_GLIBC);
  return env;
}

/** The header line that states the environment. */
export function describeEnvironment(environment: Environment): string {
  const allocator = environment.allocator === 'tuned'
    ? `glibc malloc tuned on both sides (${Object.entries(TUNED_GLIBC).map(([k, v]) => `${k}=${v}`).join(' ')})`
    : 'glibc malloc as installed on both sides';
  const pinned = SIDE_CPU === undefined ? 'sides not pinned' : `both sides pinned to CPU ${SIDE_CPU}`;
  return `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'unknown CPU'}; ${environment.threads} intra-op thread(s) per side; ${pinned}; ${allocator}`;
}

interface Request { id: number; type: 'setup' | 'step' | 'output'; spec?: SideSpec; repeat?: number }
interface Reply { id: number; ms?: number; output?: number[]; describe?: string; error?: string }

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
        const started = process.hrtime.bigint();
        for (let i = 0; i < request.repeat!; i++) await side!.step();
        answer({ id: request.id, ms: Number(process.hrtime.bigint() - started) / 1e6 / request.repeat! });
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

class SideProcess {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (reply: Reply) => void; reject: (error: Error) => void }>();

  constructor(script: string, env: Record<string, string>) {
    const node = [process.execPath, script];
    const command = SIDE_CPU === undefined ? node : ['taskset', '-c', String(SIDE_CPU), ...node];
    this.child = spawn(command[0], command.slice(1),
      { env: { ...process.env, ...env, [CHILD_FLAG]: '1' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (reply: Reply) => {
      const waiter = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      if (reply.error) waiter?.reject(new Error(`side process: ${reply.error}`));
      else waiter?.resolve(reply);
    });
    this.child.on('exit', (code, signal) => {
      for (const waiter of this.waiting.values()) waiter.reject(new Error(`side process exited (${signal ?? code})`));
      this.waiting.clear();
    });
  }

  request(type: Request['type'], spec?: SideSpec, repeat = 1): Promise<Reply> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.child.send({ id, type, spec, repeat } satisfies Request);
    });
  }

  close(): void { this.child.disconnect(); }
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
  /** The largest difference allowed between the sides' outputs; omitted: not compared. */
  tolerance?: number;
}

export interface PairResult {
  name: string;
  aMs: number[];
  bMs: number[];
  /** a / b, step by step. */
  ratios: number[];
  /** Largest absolute difference of the outputs, when compared. */
  maxDifference?: number;
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
    const a = new SideProcess(script, env);
    const b = new SideProcess(script, env);
    try {
      const [setupA, setupB] = [await a.request('setup', pair.a), await b.request('setup', pair.b)];
      let maxDifference: number | undefined;
      if (pair.tolerance !== undefined) {
        const [outA, outB] = [(await a.request('output')).output, (await b.request('output')).output];
        if (!outA || !outB || outA.length !== outB.length) {
          throw new Error(`${pair.name}: the sides' outputs cannot be compared (${outA?.length} and ${outB?.length} values)`);
        }
        maxDifference = Math.max(...outA.map((v, i) => Math.abs(v - outB[i])));
        if (!(maxDifference <= pair.tolerance)) {
          throw new Error(`${pair.name}: the sides' outputs differ by ${maxDifference}, more than ${pair.tolerance}`);
        }
      }
      const aMs: number[] = [];
      const bMs: number[] = [];
      for (let step = 0; step < pair.warmup + pair.steps; step++) {
        const order = step % 2 === 0 ? [a, b] : [b, a];
        const times = new Map<SideProcess, number>();
        for (const side of order) times.set(side, (await side.request('step', undefined, pair.repeat ?? 1)).ms!);
        if (step < pair.warmup) continue;
        aMs.push(times.get(a)!);
        bMs.push(times.get(b)!);
      }
      results.push({
        name: pair.name, aMs, bMs, ratios: aMs.map((ms, i) => ms / bMs[i]), maxDifference,
        aDescribe: setupA.describe, bDescribe: setupB.describe,
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

/** The results as a text table: ratio with spread, and the two sides' medians (ms per call). */
export function ratioTable(results: PairResult[], aName: string, bName: string): string {
  const rows = [['comparison', `ratio ${aName} / ${bName} (5–95%)`, `${aName} ms`, `${bName} ms`, 'max |diff|']];
  for (const r of results) {
    rows.push([r.name, formatRatio(r.ratios), median(r.aMs).toFixed(3), median(r.bMs).toFixed(3),
      r.maxDifference === undefined ? '–' : r.maxDifference.toExponential(1)]);
  }
  return table(rows, [false, true, true, true, true]);
}
