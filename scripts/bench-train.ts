/**
 * One training step of the seed's early-exit ResNet-20, in torch-early-exit against eager
 * PyTorch with Distiller-style branch points, in the same run:
 *
 *   node     EarlyExitModel over test/fixtures/resnet20_scripted.pt with the seed's exit
 *            ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))],
 *            earlyExitLoss with weights [0.3], SGD(lr 0.05, momentum 0.9, weight decay 5e-4),
 *            model.train(); each step inside torch.tidy (the step's tensors are released
 *            within the timed step).
 *   pytorch  scripts/bench_train_eager.py in a child process (/usr/bin/python3, Debian's
 *            torch 1.13 over the same libtorch_cpu.so): make_fixtures.py's eager ResNetCifar
 *            with the same weights, the branch attached by a forward hook on
 *            model.layer1[2].relu2 (as Distiller's BranchPoint), Distiller's earlyexit_loss,
 *            torch.optim.SGD with the same settings.
 *
 * A step is: forward (with the exit), the early-exit loss, zero_grad (to None, as both do),
 * backward, SGD step. Both sides start from the same weights (the fixture's backbone, the
 * branch initialised here and sent to Python) and cycle through the same batches, so their
 * losses must agree step for step: the script checks that, so that both time the same work.
 *
 * One intra-op thread on both sides (torch.setNumThreads(1) / torch.set_num_threads(1)) and
 * one OpenBLAS thread (OPENBLAS_NUM_THREADS=1 for both processes: OpenBLAS keeps its own
 * pool, which setNumThreads does not limit). After a warm-up of each side, the two run in
 * alternating rounds of a few steps (who goes first alternates too), so drift on the
 * machine hits both alike; while one side runs, the other waits idle on a pipe.
 *
 *   npm run build:ts && node dist/scripts/bench-train.js [--json out.json]
 */
import { ChildProcessWithoutNullStreams, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import type * as Lib from '../lib';
import { jsonFile, positiveInt } from './script-args';
import { Summary, bootstrapMedianCI, median, quantile, summarize, table } from './bench-stats';

type Tensor = Lib.Tensor;

// Loaded in main(), after OPENBLAS_NUM_THREADS is set: OpenBLAS reads it once, as the addon loads.
let lib: typeof Lib;

const EXIT_POINT = 'layer1.2.relu2';
const LOSS_WEIGHTS = [0.3];
const SGD_SETTINGS = { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 };
const PHASES = ['forward (with exit)', 'early-exit loss', 'zero_grad + backward', 'optimizer step', "release the step's tensors"];

interface Options {
  json?: string;
  batch: number;
  warmup: number;
  rounds: number;
  stepsPerRound: number;
  batches: number;
  blasThreads: number | null;
  python: string;
}

const USAGE = `usage: node dist/scripts/bench-train.js [options]
  --json FILE          also write the numbers (and every sample) to FILE
  --batch N            batch size (default 64)
  --warmup N           untimed warm-up steps of each side (default 8)
  --rounds N           alternating timed rounds (default 20)
  --steps N            steps of each side per round (default 3): rounds x steps samples each
  --batches N          distinct batches cycled through (default 4)
  --blas-threads N     OpenBLAS threads for both sides (default 1, or OPENBLAS_NUM_THREADS if set)
  --python PATH        the Python with torch (default /usr/bin/python3)`;

function parseArgs(argv: string[]): Options {
  const options: Options = {
    batch: 64, warmup: 8, rounds: 20, stepsPerRound: 3, batches: 4,
    blasThreads: process.env.OPENBLAS_NUM_THREADS ? null : 1, python: '/usr/bin/python3',
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    switch (flag) {
      case '--json': options.json = jsonFile(value); i++; break;
      case '--batch': options.batch = positiveInt(flag, value); i++; break;
      case '--warmup': options.warmup = positiveInt(flag, value); i++; break;
      case '--rounds': options.rounds = positiveInt(flag, value); i++; break;
      case '--steps': options.stepsPerRound = positiveInt(flag, value); i++; break;
      case '--batches': options.batches = positiveInt(flag, value); i++; break;
      case '--blas-threads': options.blasThreads = positiveInt(flag, value); i++; break;
      case '--python':
        if (!value) throw new Error('--python needs a path');
        options.python = value; i++; break;
      case '-h': case '--help': console.log(USAGE); process.exit(0);
      default: throw new Error(`unknown argument '${flag}'\n${USAGE}`);
    }
  }
  return options;
}

// ---------------------------------------------------------------------------------------
// The two sides

/** What a side returns for K steps: ms per step, ms per phase of each step, the loss of each step. */
interface StepsResult { ms: number[]; phases: number[][]; losses: number[] }

const now = (): bigint => process.hrtime.bigint();
const msBetween = (a: bigint, b: bigint): number => Number(b - a) / 1e6;

class NodeSide {
  private readonly model: Lib.EarlyExitModel;
  private readonly optimizer: Lib.optim.SGD;
  private index = 0;

  constructor(fixture: string, branch: Lib.nn.Sequential, private readonly data: Array<{ x: Tensor; y: Tensor }>) {
    this.model = new lib.EarlyExitModel(lib.jit.load(fixture), [[EXIT_POINT, branch]]).train();
    this.optimizer = new lib.optim.SGD(this.model.parameters(), SGD_SETTINGS);
  }

  steps(n: number): StepsResult {
    const result: StepsResult = { ms: [], phases: [], losses: [] };
    for (let i = 0; i < n; i++) {
      const { x, y } = this.data[this.index++ % this.data.length];
      const marks: bigint[] = [];
      const t0 = now();
      const loss = lib.torch.tidy(() => {
        const outputs = this.model.forward(x);
        marks.push(now());
        const value = lib.earlyExitLoss(outputs, y, LOSS_WEIGHTS);
        marks.push(now());
        this.optimizer.zeroGrad();
        value.backward();
        marks.push(now());
        this.optimizer.step();
        marks.push(now());
        return value;
      });
      const end = now();
      const [t1, t2, t3, t4] = marks;
      result.ms.push(msBetween(t0, end));
      result.phases.push([msBetween(t0, t1), msBetween(t1, t2), msBetween(t2, t3), msBetween(t3, t4), msBetween(t4, end)]);
      result.losses.push(loss.item() as number); // outside the clock, as on the Python side
      loss.dispose();
    }
    return result;
  }
}

/** bench_train_eager.py as a long-lived child that runs steps when asked, over JSON lines. */
class PythonSide {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private readonly waiting: Array<{ resolve: (line: string) => void; reject: (error: Error) => void }> = [];
  private stderr = '';
  private exited: string | null = null;

  constructor(python: string, script: string, dataFile: string, fixture: string, env: NodeJS.ProcessEnv) {
    this.child = spawn(python, [script, '--data', dataFile, '--fixture', fixture, '--threads', '1'], { env });
    this.child.stderr.on('data', (chunk: Buffer) => { this.stderr += chunk.toString(); });
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      const waiter = this.waiting.shift();
      if (waiter) waiter.resolve(line);
      else this.lines.push(line);
    });
    const fail = (why: string): void => {
      this.exited = why;
      for (const waiter of this.waiting.splice(0)) waiter.reject(this.error());
    };
    this.child.on('error', (error) => fail(`could not start ${python}: ${error.message}`));
    this.child.on('exit', (code, signal) => fail(`exited with ${signal ?? `code ${code}`}`));
  }

  get stderrText(): string { return this.stderr; }

  private error(): Error {
    return new Error(`the Python side ${this.exited ?? 'failed'}${this.stderr ? `; its stderr:\n${this.stderr}` : ''}`);
  }

  private nextLine(): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.exited) return Promise.reject(this.error());
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  async ready(): Promise<Record<string, unknown>> {
    const info = JSON.parse(await this.nextLine());
    if (!info.ready) throw new Error(`unexpected first line from Python: ${JSON.stringify(info)}`);
    return info;
  }

  async steps(n: number): Promise<StepsResult> {
    this.child.stdin.write(JSON.stringify({ cmd: 'steps', n }) + '\n');
    const reply = JSON.parse(await this.nextLine());
    if (reply.error) throw new Error(`Python: ${reply.error}`);
    return reply as StepsResult;
  }

  async quit(): Promise<void> {
    if (this.exited) return;
    const done = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.stdin.end(JSON.stringify({ cmd: 'quit' }) + '\n');
    await done;
  }

  kill(): void { if (!this.exited) this.child.kill(); }
}

// ---------------------------------------------------------------------------------------
// Report


const fmt = (value: number, digits = 2): string => value.toFixed(digits);

function fixturePath(): string {
  // dist/scripts/bench-train.js -> <package>/test/fixtures
  const file = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'resnet20_scripted.pt');
  if (!fs.existsSync(file)) throw new Error(`no fixture ${file}: run \`npm run fixtures\` first`);
  return file;
}

function pythonScript(): string {
  // The .py file is not compiled: it stays in <package>/scripts.
  const file = path.resolve(__dirname, '..', '..', 'scripts', 'bench_train_eager.py');
  if (!fs.existsSync(file)) throw new Error(`no ${file}`);
  return file;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (options.blasThreads !== null) process.env.OPENBLAS_NUM_THREADS = String(options.blasThreads);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  lib = require('../lib') as typeof Lib;
  const { torch, nn } = lib;
  torch.setNumThreads(1);
  const threads = torch.getNumThreads();
  const started = Date.now();
  const loadBefore = os.loadavg();

  console.log('torch-early-exit: training-step benchmark against eager PyTorch (ResNet-20 CIFAR, seed exit)');
  console.log(`LibTorch ${torch.version.libtorch}, Node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'})`);

  // The data and the branch's initial weights, shared with Python through a torch.save file.
  torch.manualSeed(0);
  const data = Array.from({ length: options.batches }, () => ({
    x: torch.randn([options.batch, 3, 32, 32]),
    y: torch.randint(0, 10, [options.batch]),
  }));
  const branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
  const branchState = branch.stateDict();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-train-'));
  const dataFile = path.join(tmp, 'data.pt');
  const shared: Record<string, Lib.Tensor | number | number[] | Record<string, number>> = {
    batches: options.batches, lossWeights: LOSS_WEIGHTS, sgd: SGD_SETTINGS,
    'branch.2.weight': branchState['2.weight'], 'branch.2.bias': branchState['2.bias'],
  };
  data.forEach(({ x, y }, i) => { shared[`x${i}`] = x; shared[`y${i}`] = y; });
  torch.save(shared as never, dataFile);

  const env = { ...process.env, OPENBLAS_NUM_THREADS: process.env.OPENBLAS_NUM_THREADS ?? '1', OMP_NUM_THREADS: '1' };
  const python = new PythonSide(options.python, pythonScript(), dataFile, fixturePath(), env);
  try {
    const pyInfo = await python.ready();
    const nodeSide = new NodeSide(fixturePath(), branch, data);
    console.log(`node: intra-op threads ${threads} (torch.setNumThreads(1)); pytorch: torch ${pyInfo.torch}, Python ${pyInfo.python}, ` +
      `intra-op threads ${pyInfo.threads}, MKL-DNN ${pyInfo.mkldnn}; OpenBLAS threads ${env.OPENBLAS_NUM_THREADS} for both`);
    console.log(`batch ${options.batch}, ${options.batches} batches cycled; warm-up ${options.warmup} steps each, then ` +
      `${options.rounds} alternating rounds of ${options.stepsPerRound} steps each; load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')}`);
    if (threads !== 1) console.log(`WARNING: asked for 1 intra-op thread, LibTorch reports ${threads}`);

    const all: Record<'node' | 'pytorch', StepsResult[]> = { node: [], pytorch: [] };
    // Warm-up: the first steps also check that both sides compute the same thing.
    const warmNode = nodeSide.steps(options.warmup);
    const warmPython = await python.steps(options.warmup);
    process.stdout.write('rounds: ');
    const cpuBefore = process.cpuUsage();
    for (let round = 0; round < options.rounds; round++) {
      const order: Array<'node' | 'pytorch'> = round % 2 === 0 ? ['node', 'pytorch'] : ['pytorch', 'node'];
      for (const side of order) {
        all[side].push(side === 'node' ? nodeSide.steps(options.stepsPerRound) : await python.steps(options.stepsPerRound));
      }
      process.stdout.write(`${round + 1} `);
    }
    process.stdout.write('\n');
    const nodeCpu = process.cpuUsage(cpuBefore);
    await python.quit();

    // Both sides ran the same steps on the same batches from the same weights.
    const nodeLosses = [...warmNode.losses, ...all.node.flatMap((r) => r.losses)];
    const pyLosses = [...warmPython.losses, ...all.pytorch.flatMap((r) => r.losses)];
    const lossDiff = (i: number): number => Math.abs(nodeLosses[i] - pyLosses[i]);
    const firstSteps = Math.min(3, nodeLosses.length);
    const worstFirst = Math.max(...Array.from({ length: firstSteps }, (_, i) => lossDiff(i)));
    const last = nodeLosses.length - 1;

    const samples = { node: all.node.flatMap((r) => r.ms), pytorch: all.pytorch.flatMap((r) => r.ms) };
    const summaries = { node: summarize(samples.node), pytorch: summarize(samples.pytorch) };
    const ratio = summaries.node.median / summaries.pytorch.median;
    const perRound = all.node.map((r, i) => median(r.ms) / median(all.pytorch[i].ms));
    const pairedRatio = median(perRound);
    const ci = bootstrapMedianCI(perRound);
    const phaseMedians = (results: StepsResult[]): number[] => {
      const phases = results.flatMap((r) => r.phases);
      return PHASES.map((_, p) => median(phases.map((row) => row[p] ?? 0)));
    };
    const phases = { node: phaseMedians(all.node), pytorch: phaseMedians(all.pytorch) };

    console.log(`\nResNet-20 + seed exit, batch ${options.batch}, training step (forward, loss, backward, SGD step): ms per step`);
    const rows = [['side', 'n', 'median', 'p25', 'p75', 'min', 'max']];
    const label = { node: 'node (torch-early-exit, TorchScript + hook)', pytorch: 'pytorch (eager, forward hook as BranchPoint)' };
    for (const side of ['node', 'pytorch'] as const) {
      const s = summaries[side];
      rows.push([label[side], String(s.n), fmt(s.median), fmt(s.p25), fmt(s.p75), fmt(s.min), fmt(s.max)]);
    }
    console.log(table(rows, [false, true, true, true, true, true, true]));
    console.log(`\nratio node/pytorch (medians): ${fmt(ratio, 3)}; paired per round: ${fmt(pairedRatio, 3)} ` +
      `(95% CI ${fmt(ci[0], 3)} .. ${fmt(ci[1], 3)}, ${perRound.length} rounds)`);
    const verdict = ratio <= 1 ? 'yes' : ci[0] <= 1 ? 'within noise (CI includes 1)' : 'NO';
    console.log(`goal "no slower than PyTorch": ${verdict}`);

    console.log('\nper phase (median ms; the medians of the phases need not add up to the median step)');
    const phaseRows = [['phase', 'node', 'pytorch', 'node/pytorch']];
    PHASES.forEach((name, p) => {
      const [a, b] = [phases.node[p], phases.pytorch[p]];
      phaseRows.push([name, fmt(a), fmt(b), b > 0.005 ? fmt(a / b, 2) : '-']);
    });
    console.log(table(phaseRows, [false, true, true, true]));
    console.log(`\nsame computation: |loss difference| over the first ${firstSteps} steps ${worstFirst.toExponential(2)} ` +
      `(step 1: node ${nodeLosses[0].toFixed(6)}, pytorch ${pyLosses[0].toFixed(6)}); after ${last + 1} steps: ` +
      `node ${nodeLosses[last].toFixed(6)}, pytorch ${pyLosses[last].toFixed(6)}`);
    if (!(worstFirst < 1e-3)) console.log('WARNING: the two sides do not compute the same losses: the comparison is suspect');
    const nodeCpuMs = Number(nodeCpu.user + nodeCpu.system) / 1e3;
    const seconds = (Date.now() - started) / 1000;
    const loadAfter = os.loadavg();
    console.log(`\n${seconds.toFixed(1)} s; Node CPU time during the rounds ${fmt(nodeCpuMs / 1000, 1)} s; load average now ` +
      `${loadAfter.map((l) => l.toFixed(2)).join(' ')} (other processes on this machine add noise; the paired CI shows how much)`);
    if (python.stderrText.trim()) console.log(`Python's stderr:\n${python.stderrText.trim()}`);

    if (options.json) {
      const report = {
        benchmark: 'bench-train',
        date: new Date().toISOString(),
        environment: {
          libtorch: torch.version.libtorch, node: process.version, python: pyInfo, cpus: os.cpus().length,
          cpuModel: os.cpus()[0]?.model, intraOpThreads: threads, openblasThreads: env.OPENBLAS_NUM_THREADS,
          loadAverageBefore: loadBefore, loadAverageAfter: loadAfter,
        },
        method: {
          model: 'ResNet-20 CIFAR (test/fixtures/resnet20_scripted.pt; eager: make_fixtures.ResNetCifar with its state dict)',
          exit: { point: EXIT_POINT, branch: 'Sequential(AvgPool2d(3), Flatten(), Linear(1600, 10))' },
          lossWeights: LOSS_WEIGHTS, sgd: SGD_SETTINGS, batch: options.batch, batches: options.batches,
          warmupSteps: options.warmup, rounds: options.rounds, stepsPerRound: options.stepsPerRound,
          step: 'forward with exit, early-exit loss, zero_grad(set_to_none), backward, SGD step; node inside torch.tidy',
          units: 'ms per step',
        },
        results: {
          summaries, ratioOfMedians: ratio, pairedRatio: { median: pairedRatio, ci95: ci, perRound },
          phases: Object.fromEntries(PHASES.map((name, p) => [name, { node: phases.node[p], pytorch: phases.pytorch[p] }])),
          losses: { node: nodeLosses, pytorch: pyLosses, maxAbsDiffFirstSteps: worstFirst },
          samples: { node: all.node.map((r) => r.ms), pytorch: all.pytorch.map((r) => r.ms) },
        },
        seconds,
      };
      fs.writeFileSync(options.json, JSON.stringify(report, null, 2) + '\n');
      console.log(`wrote ${options.json}`);
    }
  } finally {
    python.kill();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error instanceof Error ? (process.env.BENCH_DEBUG ? error.stack : error.message) : error);
  process.exit(1);
});
