/**
 * What the forward-hook mechanism costs on ResNet-20 (CIFAR, Distiller's module names):
 *
 *   (a) plain     the loaded model's forward: instrumented (taps after every submodule
 *                 call), no hook registered
 *   (b) exit      EarlyExitModel's forward with the seed's exit at 'layer1.2.relu2':
 *                 nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
 *   (c) branch    that branch alone on a [N, 16, 32, 32] input
 *   (c') cold     the same, each call right after an untimed (a): the branch's weights
 *                 and input are out of cache, as a forward leaves them
 *   (d) identity  EarlyExitModel's forward with nn.Identity() as the exit there: the
 *                 mechanism with a branch that computes nothing (a cross-check of b-a-c
 *                 that needs no subtraction)
 *
 * The mechanism's own cost is (b) - (a) - (c), reported as a percentage of (a); the goal
 * is under 2%. One intra-op thread (and one OpenBLAS thread: OpenBLAS keeps its own pool,
 * which torch.setNumThreads does not limit), torch.noGrad, eval mode. Each cell warms up
 * (the profiling executor optimises after a few runs), then runs the variants in rounds,
 * rotating their order each round so that drift (other processes, thermal state) hits them
 * alike. (a), (b) and (d) run on the same loaded model: exits are attached and detached
 * outside the timed calls, so no difference between two loads of the file can pass for
 * hook cost.
 *
 *   npm run build:ts && node dist/scripts/bench-hooks.js [--json out.json]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type * as Lib from '../lib';
import { jsonFile, positiveInt } from './script-args';
import { Summary, bootstrapMedianCI, median, quantile, summarize, table } from './bench-stats';

type Tensor = Lib.Tensor;
type EarlyExitModel = Lib.EarlyExitModel;
type Sequential = Lib.nn.Sequential;

// Loaded in main(), after OPENBLAS_NUM_THREADS is set: OpenBLAS reads it once, as the addon loads.
let torch: typeof Lib.torch;
let jit: typeof Lib.jit;
let nn: typeof Lib.nn;
let EarlyExitModel: typeof Lib.EarlyExitModel;

interface Options {
  json?: string;
  /** OpenBLAS's own threads (it ignores torch.setNumThreads); null keeps OPENBLAS_NUM_THREADS from the environment. */
  blasThreads: number | null;
  rounds: number;
  warmup: number;
  /** Calls of each variant per round, by batch size (one value applies to every batch). */
  calls: Map<number, number> | number;
  batches: number[];
  fixtures: string[];
}

const USAGE = `usage: node dist/scripts/bench-hooks.js [options]
  --json FILE        also write the numbers (and every sample) to FILE
  --rounds N         timed rounds per cell (default 30)
  --warmup N         warm-up calls of each variant per cell (default 20, at least 20)
  --calls N          calls of each variant per round (default 30 at batch 1, 3 at batch 64)
  --blas-threads N   OpenBLAS threads (default 1, or OPENBLAS_NUM_THREADS if set): OpenBLAS
                     keeps its own thread pool, which torch.setNumThreads does not limit
  --batches 1,64     batch sizes (default 1,64)
  --fixtures LIST    scripted,traced (default both)
BENCH_DEBUG=1 in the environment prints the stack of an error.`;

function parseArgs(argv: string[]): Options {
  const options: Options = {
    blasThreads: process.env.OPENBLAS_NUM_THREADS ? null : 1,
    rounds: 30, warmup: 20, calls: new Map([[1, 30], [64, 3]]), batches: [1, 64], fixtures: ['scripted', 'traced'],
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    switch (flag) {
      case '--json': options.json = jsonFile(value); i++; break;
      case '--blas-threads': options.blasThreads = positiveInt(flag, value); i++; break;
      case '--rounds': options.rounds = positiveInt(flag, value); i++; break;
      case '--warmup': options.warmup = Math.max(20, positiveInt(flag, value)); i++; break;
      case '--calls': options.calls = positiveInt(flag, value); i++; break;
      case '--batches': options.batches = (value ?? '').split(',').map((b) => positiveInt(flag, b)); i++; break;
      case '--fixtures':
        options.fixtures = (value ?? '').split(',');
        for (const f of options.fixtures) if (f !== 'scripted' && f !== 'traced') throw new Error(`unknown fixture '${f}'`);
        i++; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0);
      default: throw new Error(`unknown argument '${flag}'\n${USAGE}`);
    }
  }
  return options;
}

function callsPerRound(options: Options, batch: number): number {
  if (typeof options.calls === 'number') return options.calls;
  return options.calls.get(batch) ?? Math.max(1, Math.round(20 / batch));
}

// ---------------------------------------------------------------------------------------
// Measurement

type Variant = 'plain' | 'exit' | 'identity' | 'branch' | 'branchCold';
const VARIANTS: Variant[] = ['plain', 'exit', 'identity', 'branch', 'branchCold'];
const LABELS: Record<Variant, string> = {
  plain: '(a) forward, no exits',
  exit: '(b) forward + seed exit at layer1.2.relu2',
  branch: '(c) seed exit branch alone [N,16,32,32]',
  branchCold: "(c') the same, each call after an untimed (a)",
  identity: '(d) forward + nn.Identity() exit there',
};
const EXIT_POINT = 'layer1.2.relu2';

/** Milliseconds taken by one call; what it returns is disposed after the clock stops. */
function timeCall(fn: () => unknown): number {
  return torch.tidy(() => {
    const start = process.hrtime.bigint();
    fn();
    const end = process.hrtime.bigint();
    return Number(end - start) / 1e6;
  });
}

function seedExit(): Sequential {
  return nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
}

function fixturePath(name: string): string {
  // dist/scripts/bench-hooks.js -> <package>/test/fixtures
  const file = path.resolve(__dirname, '..', '..', 'test', 'fixtures', `resnet20_${name}.pt`);
  if (!fs.existsSync(file)) throw new Error(`no fixture ${file}: run \`npm run fixtures\` first`);
  return file;
}

/** A cost estimate: from the overall medians, and paired (per round, then the median over rounds). */
interface Estimate {
  fromMedians: { ms: number; percent: number };
  paired: { ms: number; percent: number; ci95Percent: [number, number] };
}

interface CellResult {
  fixture: string;
  batch: number;
  callsPerRound: number;
  rounds: number;
  /** Process CPU time over wall time while the rounds ran: about 1 when one core did the work. */
  cpuPerWall: number;
  summaries: Record<Variant, Summary>;
  /** The headline: (b) - (a) - (c), as a percentage of (a). */
  hookCost: Estimate;
  /** (b) - (a) - (c'): with the branch timed in the cache state a forward leaves. */
  hookCostColdBranch: Estimate;
  /** A cross-check that needs no subtraction of the branch: (d) - (a). */
  identityExitCost: Estimate;
  samples: Record<Variant, number[][]>;
}

/** `samples[plus] - samples.plain - sum(samples[minus])`, overall and per round, in ms and % of (a). */
function estimate(samples: Record<Variant, number[][]>, plus: Variant, minus: Variant[]): Estimate {
  const cost = (of: (variant: Variant) => number): number =>
    of(plus) - of('plain') - minus.reduce((sum, variant) => sum + of(variant), 0);
  const overall = cost((variant) => median(samples[variant].flat()));
  const plainMedian = median(samples.plain.flat());
  const perRoundMs = samples.plain.map((_, r) => cost((variant) => median(samples[variant][r])));
  const perRoundPercent = perRoundMs.map((value, r) => (value / median(samples.plain[r])) * 100);
  return {
    fromMedians: { ms: overall, percent: (overall / plainMedian) * 100 },
    paired: { ms: median(perRoundMs), percent: median(perRoundPercent), ci95Percent: bootstrapMedianCI(perRoundPercent) },
  };
}

/** Checks that the exit changes nothing in the backbone's output and equals the branch on the tapped features. */
function checkOutputs(model: EarlyExitModel, branch: Sequential, input: Tensor): void {
  torch.tidy(() => {
    const outputs = model.forward(input);
    if (outputs.length !== 2) throw new Error(`EarlyExitModel.forward returned ${outputs.length} tensors, expected 2`);
    const [exitOutput, withExit] = outputs;
    model.eeMgr.detachExits(model.backbone);
    let features: Tensor | undefined;
    let firings = 0;
    const handle = model.backbone.getModule(EXIT_POINT).registerForwardHook((_m, _inputs, output) => {
      features = (output as Tensor).clone();
      firings++;
    });
    const plain = model.backbone.forward(input) as Tensor;
    handle.remove();
    model.eeMgr.attachExits(model.backbone, model.exitsDef);
    if (!features || firings !== 1) throw new Error(`the JS hook on ${EXIT_POINT} ran ${firings} times in one forward`);
    if (features.shape.join() !== [input.shape[0], 16, 32, 32].join()) throw new Error(`features at ${EXIT_POINT} are [${features.shape}]`);
    if (exitOutput.shape.join() !== [input.shape[0], 10].join()) throw new Error(`the exit output is [${exitOutput.shape}]`);
    if (!torch.allclose(plain, withExit, 1e-5, 1e-6)) throw new Error('the final output differs with the exit attached');
    if (!torch.allclose(branch.forward(features), exitOutput, 1e-5, 1e-6)) throw new Error('the exit output is not the branch on the tapped features');
  });
}

async function runCell(fixture: string, batch: number, options: Options): Promise<CellResult> {
  const calls = callsPerRound(options, batch);
  const backbone = jit.load(fixturePath(fixture));
  const branch = seedExit();
  // Two exit models over the one backbone; at most one is attached at a time.
  const exitModel = new EarlyExitModel(backbone, [[EXIT_POINT, branch]]).eval();
  const identityModel = new EarlyExitModel(backbone, [[EXIT_POINT, nn.Identity()]]).eval();
  identityModel.eeMgr.detachExits(backbone);
  let attached: EarlyExitModel | null = exitModel;
  const attach = (model: EarlyExitModel | null): void => {
    if (model === attached) return;
    attached?.eeMgr.detachExits(backbone);
    model?.eeMgr.attachExits(backbone, model.exitsDef);
    attached = model;
  };

  const input = torch.randn([batch, 3, 32, 32]);
  const features = torch.randn([batch, 16, 32, 32]);
  // `model`: the exit model attached while the variant runs (null: none; undefined: any).
  // `before`: untimed work before each timed call.
  const variants: Record<Variant, { model: EarlyExitModel | null | undefined; call: () => unknown; before?: () => unknown }> = {
    plain: { model: null, call: () => backbone.forward(input) },
    exit: { model: exitModel, call: () => exitModel.forward(input) },
    identity: { model: identityModel, call: () => identityModel.forward(input) },
    branch: { model: undefined, call: () => branch.forward(features) },
    branchCold: { model: null, call: () => branch.forward(features), before: () => backbone.forward(input) },
  };
  const runVariant = (variant: Variant, n: number, into?: number[]): void => {
    const { model, call, before } = variants[variant];
    if (model !== undefined) attach(model); // exits are attached and detached outside the clock
    for (let i = 0; i < n; i++) {
      if (before) torch.tidy(before);
      const ms = timeCall(call);
      into?.push(ms);
    }
  };

  // Warm-up, interleaved too, then a check that the exit computes what it should.
  torch.noGrad(() => {
    for (let i = 0; i < options.warmup; i++) for (const variant of VARIANTS) runVariant(variant, 1);
    attach(exitModel);
    checkOutputs(exitModel, branch, input);
  });

  const samples = Object.fromEntries(VARIANTS.map((v) => [v, []])) as unknown as Record<Variant, number[][]>;
  const cpuBefore = process.cpuUsage();
  const wallBefore = process.hrtime.bigint();
  for (let round = 0; round < options.rounds; round++) {
    torch.noGrad(() => {
      for (let k = 0; k < VARIANTS.length; k++) {
        const variant = VARIANTS[(round + k) % VARIANTS.length];
        const times: number[] = [];
        runVariant(variant, calls, times);
        samples[variant].push(times);
      }
    });
    // A turn of the event loop between rounds, as a server would have: Node runs the
    // deferred finalizers of the JS tensor objects there (without it the process grows).
    await new Promise((resolve) => setImmediate(resolve));
  }
  const cpu = process.cpuUsage(cpuBefore);
  const cpuPerWall = (cpu.user + cpu.system) / (Number(process.hrtime.bigint() - wallBefore) / 1e3);

  attach(null);
  input.dispose();
  features.dispose();
  backbone.dispose();

  const summaries = Object.fromEntries(VARIANTS.map((v) => [v, summarize(samples[v].flat())])) as Record<Variant, Summary>;
  return {
    fixture, batch, callsPerRound: calls, rounds: options.rounds, cpuPerWall, summaries,
    hookCost: estimate(samples, 'exit', ['branch']),
    hookCostColdBranch: estimate(samples, 'exit', ['branchCold']),
    identityExitCost: estimate(samples, 'identity', []),
    samples,
  };
}

// ---------------------------------------------------------------------------------------
// Report


const ms = (value: number): string => value.toFixed(3);
const pct = (value: number): string => `${value >= 0 ? '+' : ''}${value.toFixed(2)}%`;

function printCell(cell: CellResult): void {
  console.log(`\nResNet-20 ${cell.fixture}, batch ${cell.batch}: ${cell.rounds} rounds x ${cell.callsPerRound} calls of each variant ` +
    `(ms per call; CPU time / wall time ${cell.cpuPerWall.toFixed(2)})`);
  const rows = [['variant', 'n', 'median', 'trim.mean', 'min', 'p25', 'p75']];
  for (const variant of VARIANTS) {
    const s = cell.summaries[variant];
    rows.push([LABELS[variant], String(s.n), ms(s.median), ms(s.trimmedMean), ms(s.min), ms(s.p25), ms(s.p75)]);
  }
  console.log(table(rows, [false, true, true, true, true, true, true]));
  if (cell.cpuPerWall < 0.9) {
    console.log(`NOTE: this process ran only ${(cell.cpuPerWall * 100).toFixed(0)}% of the wall time: other processes ` +
      'took the core, so these numbers are noisy; run again on a quiet machine');
  }
  const line = (label: string, e: Estimate): void => console.log(`${label}: ${pct(e.paired.percent)} of (a) ` +
    `(${ms(e.paired.ms)} ms; paired per round, 95% CI ${ci(e)}); from the overall medians ${pct(e.fromMedians.percent)} (${ms(e.fromMedians.ms)} ms)`);
  line('hook cost (b)-(a)-(c)', cell.hookCost);
  line("hook cost (b)-(a)-(c')", cell.hookCostColdBranch);
  line('identity exit (d)-(a)', cell.identityExitCost);
}

const ci = (e: Estimate): string => `${pct(e.paired.ci95Percent[0])} .. ${pct(e.paired.ci95Percent[1])}`;

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (options.blasThreads !== null) process.env.OPENBLAS_NUM_THREADS = String(options.blasThreads);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  ({ torch, jit, nn, EarlyExitModel } = require('../lib') as typeof Lib);
  torch.setNumThreads(1);
  const threads = torch.getNumThreads();
  const started = Date.now();
  const loadBefore = os.loadavg();
  const rssBefore = process.memoryUsage().rss;
  console.log('torch-early-exit: forward-hook overhead benchmark (ResNet-20 CIFAR)');
  console.log(`LibTorch ${torch.version.libtorch}, Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'})`);
  console.log(`intra-op threads: ${threads} (torch.setNumThreads(1)); OpenBLAS threads: ${process.env.OPENBLAS_NUM_THREADS} ` +
    `(OPENBLAS_NUM_THREADS${options.blasThreads === null ? ', from the environment' : ''}); torch.noGrad; eval mode`);
  console.log(`warm-up ${options.warmup} calls of each variant per cell, then rounds of the variants in rotating order; ` +
    `load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')}`);
  if (threads !== 1) console.log(`WARNING: asked for 1 intra-op thread, LibTorch reports ${threads}`);

  const cells: CellResult[] = [];
  for (const fixture of options.fixtures) {
    for (const batch of options.batches) {
      const cell = await runCell(fixture, batch, options);
      printCell(cell);
      cells.push(cell);
    }
  }

  console.log('\nSummary (ms are medians per call; % are of (a), paired per round; goal: hook cost < 2%)');
  const rows = [['model', 'batch', '(a) ms', '(b) ms', '(c) ms', "(c') ms", '(d) ms',
    'hook cost (b)-(a)-(c)', '95% CI', "(b)-(a)-(c')", '95% CI', '(d)-(a)', '95% CI', '< 2%']];
  for (const cell of cells) {
    const { plain, exit, branch, branchCold, identity } = cell.summaries;
    rows.push([cell.fixture, String(cell.batch), ms(plain.median), ms(exit.median), ms(branch.median), ms(branchCold.median),
      ms(identity.median), pct(cell.hookCost.paired.percent), ci(cell.hookCost),
      pct(cell.hookCostColdBranch.paired.percent), ci(cell.hookCostColdBranch),
      pct(cell.identityExitCost.paired.percent), ci(cell.identityExitCost), cell.hookCost.paired.percent < 2 ? 'yes' : 'NO']);
  }
  console.log(table(rows, rows[0].map((_, c) => c > 0 && c < rows[0].length - 1)));
  const seconds = (Date.now() - started) / 1000;
  const loadAfter = os.loadavg();
  const memory = { rssBeforeMB: rssBefore / 2 ** 20, rssAfterMB: process.memoryUsage().rss / 2 ** 20, maxRssMB: process.resourceUsage().maxRSS / 1024 };
  console.log(`\n${seconds.toFixed(1)} s; RSS ${memory.rssBeforeMB.toFixed(0)} MB after loading, ${memory.rssAfterMB.toFixed(0)} MB at the end ` +
    `(max ${memory.maxRssMB.toFixed(0)} MB); load average now ${loadAfter.map((l) => l.toFixed(2)).join(' ')} ` +
    '(other processes on this machine add noise; the paired CIs show how much)');

  if (options.json) {
    const report = {
      benchmark: 'bench-hooks',
      date: new Date().toISOString(),
      environment: {
        libtorch: torch.version.libtorch, node: process.version, cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model, intraOpThreads: threads, loadAverageBefore: loadBefore, loadAverageAfter: loadAfter,
      },
      method: {
        warmupCallsPerVariant: options.warmup, rounds: options.rounds, gradEnabled: false, mode: 'eval',
        callsPerRound: Object.fromEntries(options.batches.map((b) => [b, callsPerRound(options, b)])),
        blasThreads: process.env.OPENBLAS_NUM_THREADS,
        exit: { point: EXIT_POINT, branch: 'Sequential(AvgPool2d(3), Flatten(), Linear(1600, 10))' },
        variants: LABELS,
        hookCost: '(b) - (a) - (c), as % of (a); paired = per round from the round medians, then the median over rounds',
        hookCostColdBranch: "(b) - (a) - (c'), the same way",
        identityExitCost: '(d) - (a), as % of (a), the same way',
        units: 'ms per call',
      },
      results: cells,
      seconds,
      memory,
    };
    fs.writeFileSync(options.json, JSON.stringify(report, null, 2) + '\n');
    console.log(`wrote ${options.json}`);
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? (process.env.BENCH_DEBUG ? error.stack : error.message) : error);
  process.exit(1);
});
