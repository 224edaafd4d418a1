/**
 * One training step of the seed's early-exit ResNet-20, in torch-early-exit against eager
 * PyTorch with Distiller-style branch points, paired step by step by the shared harness
 * (two processes taking turns, pinned to the same CPU, one intra-op thread each):
 *
 *   library  EarlyExitModel over test/fixtures/resnet20_scripted.pt with the seed's exit
 *            ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))],
 *            earlyExitLoss with weights [0.3], SGD(lr 0.05, momentum 0.9, weight decay 5e-4),
 *            model.train(); each step inside torch.tidy (the step's tensors are released
 *            within the timed step).
 *   pytorch  scripts/bench_train_eager.py (/usr/bin/python3, Debian's torch over the same
 *            libtorch_cpu.so): make_fixtures.py's eager ResNetCifar with the same weights, the
 *            branch attached by a forward hook on model.layer1[2].relu2 (as Distiller's
 *            BranchPoint), Distiller's earlyexit_loss, torch.optim.SGD with the same settings.
 *
 * Eval forwards without gradients at batch 1 and 64 (the same model, exit attached) are
 * paired the same way.
 *
 * A step is: forward (with the exit), the early-exit loss, zero_grad (to None, as both do),
 * backward, SGD step. Both sides start from the same weights (the fixture's backbone, the
 * branch initialised here) and cycle through the same batches, written once with torch.save
 * and read by both; their losses are compared before and after the timed steps, so that
 * both time the same work.
 *
 * Each memory setting (bench-harness.ts's AllocatorSetting) is a run of its own:
 * 'as-installed' is what users get (this library's CPU block cache against PyTorch's glibc
 * malloc as installed); 'glibc' and 'tuned' give both sides the same allocator.
 *
 *   npm run bench:train -- [--allocator as-installed,glibc,tuned] [--steps N] [--batch N] [--json FILE]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, Tensor, earlyExitLoss, jit, nn, optim, torch } from '../lib';
import { packageRoot } from '../lib/util/package-root';
import {
  ALLOCATOR_SETTINGS, AllocatorSetting, Environment, Pair, PairResult, Phases, Side, allocatorSetting, describeEnvironment,
  phaseTable, ratioTable, runPairs, serveSide,
} from './bench-harness';
import { jsonFile, positiveInt } from './script-args';

const ROOT = packageRoot();
const FIXTURE = path.join(ROOT, 'test', 'fixtures', 'resnet20_scripted.pt');
const EXIT_POINT = 'layer1.2.relu2';
const LOSS_WEIGHTS = [0.3];
const SGD_SETTINGS = { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 };
const PHASES = ['forward (with exit)', 'early-exit loss', 'zero_grad + backward', 'optimizer step', "release the step's tensors"];

const seedBranch = () => nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));

/** The model with the seed's exit, and the batches, from the file the parent wrote. */
function loadShared(options: Record<string, unknown>) {
  torch.setNumThreads(options.threads as number);
  const shared = torch.load(options.data as string) as unknown as Record<string, Tensor | number>;
  const batches = Array.from({ length: shared.batches as number }, (_, i) => ({ x: shared[`x${i}`] as Tensor, y: shared[`y${i}`] as Tensor }));
  const branch = seedBranch();
  branch.loadStateDict({ '2.weight': shared['branch.2.weight'] as Tensor, '2.bias': shared['branch.2.bias'] as Tensor });
  return { batches, model: new EarlyExitModel(jit.load(FIXTURE), [[EXIT_POINT, branch]]) };
}

const describeLibrary = () => `torch-early-exit on LibTorch ${torch.version.libtorch}, ${torch.getNumThreads()} intra-op thread(s), ` +
  `CPU block cache ${torch.memoryStats().enabled ? 'on' : 'off'}`;

/** This library's eval forward without gradients, on the first `batch` samples of the first batch. */
function libraryForwardSide(options: Record<string, unknown>): Side {
  const { batches, model } = loadShared(options);
  model.eval();
  const x = torch.keep(batches[0].x.narrow(0, 0, options.batch as number).contiguous());
  const run = () => model.forward(x);
  return {
    step: () => torch.noGrad(() => torch.tidy(() => { run(); })),
    output: () => torch.noGrad(() => torch.tidy(() => run().flatMap((t) => Array.from(t.data() as Float32Array)))),
    describe: describeLibrary(),
  };
}

/** This library's training step. */
function librarySide(options: Record<string, unknown>): Side {
  const { batches, model } = loadShared(options);
  model.train();
  const optimizer = new optim.SGD(model.parameters(), SGD_SETTINGS);
  let index = 0;
  let lastLoss = NaN;
  const now = () => process.hrtime.bigint();
  const step = (): Phases => {
    const { x, y } = batches[index++ % batches.length];
    const marks = [now()];
    torch.tidy(() => {
      const outputs = model.forward(x);
      marks.push(now());
      const loss = earlyExitLoss(outputs, y, LOSS_WEIGHTS);
      marks.push(now());
      optimizer.zeroGrad();
      loss.backward();
      marks.push(now());
      optimizer.step();
      marks.push(now());
      lastLoss = loss.detach().data()[0] as number; // a copy of one number, as Python's detach
    });
    marks.push(now());
    return Object.fromEntries(PHASES.map((name, i) => [name, Number(marks[i + 1] - marks[i]) / 1e6]));
  };
  return {
    step,
    output: () => { step(); return [lastLoss]; },
    describe: describeLibrary(),
  };
}

serveSide({ library: librarySide, libraryForward: libraryForwardSide });

interface Options {
  allocators: AllocatorSetting[]; steps: number; warmup: number; batch: number; batches: number; forwardBatches: number[]; json?: string;
}

const USAGE = `usage: npm run bench:train -- [options]
  --allocator LIST   memory settings to run, of ${ALLOCATOR_SETTINGS.join(', ')} (default all)
  --steps N          timed steps of each side per setting (default 30)
  --warmup N         untimed steps of each side first (default 8)
  --batch N          batch size of the training step (default 64)
  --forward LIST     batch sizes of the eval forwards, at most --batch (default 1,64)
  --batches N        distinct batches cycled through (default 4)
  --json FILE        also write every step's times to FILE`;

function parseArgs(argv: string[]): Options {
  const options: Options = { allocators: [...ALLOCATOR_SETTINGS], steps: 30, warmup: 8, batch: 64, batches: 4, forwardBatches: [1, 64] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    switch (flag) {
      case '--allocator': options.allocators = (value ?? '').split(',').map((v) => allocatorSetting(v, 'as-installed')); break;
      case '--steps': options.steps = positiveInt(flag, value); break;
      case '--warmup': options.warmup = positiveInt(flag, value); break;
      case '--batch': options.batch = positiveInt(flag, value); break;
      case '--batches': options.batches = positiveInt(flag, value); break;
      case '--forward': options.forwardBatches = (value ?? '').split(',').map((b) => positiveInt(flag, b)); break;
      case '--json': options.json = jsonFile(value); break;
      case '-h': case '--help': console.log(USAGE); process.exit(0);
      default: throw new Error(`unknown argument '${flag}'\n${USAGE}`);
    }
  }
  if (options.forwardBatches.some((b) => b > options.batch)) throw new Error(`--forward batch sizes must be at most --batch ${options.batch}`);
  return options;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(FIXTURE)) throw new Error(`no fixture ${FIXTURE}: run \`npm run fixtures\` first`);
  // The batches and the branch's initial weights, shared with both sides through a torch.save file.
  torch.manualSeed(0);
  const shared: Record<string, Tensor | number | number[] | Record<string, number>> = {
    batches: options.batches, lossWeights: LOSS_WEIGHTS, sgd: SGD_SETTINGS,
  };
  for (let i = 0; i < options.batches; i++) {
    shared[`x${i}`] = torch.randn([options.batch, 3, 32, 32]);
    shared[`y${i}`] = torch.randint(0, 10, [options.batch]);
  }
  const branchState = seedBranch().stateDict();
  shared['branch.2.weight'] = branchState['2.weight'];
  shared['branch.2.bias'] = branchState['2.bias'];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-train-'));
  const data = path.join(tmp, 'data.pt');
  torch.save(shared as never, data);

  console.log(`bench:train: ResNet-20 + seed exit, batch ${options.batch}, a training step (forward, loss, backward, SGD step), ` +
    `torch-early-exit against eager PyTorch; ${options.warmup} warm-up and ${options.steps} timed steps of each side, in turns`);
  console.log('ratio < 1: this library is faster.\n');
  const report: Array<{ environment: Environment; results: PairResult[] }> = [];
  try {
    for (const allocator of options.allocators) {
      const environment: Environment = { threads: 1, allocator };
      const python = { script: path.join(ROOT, 'scripts', 'bench_train_eager.py') };
      const training: Pair = {
        name: `training step, batch ${options.batch}`,
        a: { factory: 'library', options: { data, threads: 1 } },
        b: { factory: 'eager', options: { data, fixture: FIXTURE, threads: 1 }, python },
        steps: options.steps, warmup: options.warmup, tolerance: 1e-3,
      };
      const forwards: Pair[] = options.forwardBatches.map((batch) => ({
        name: `eval forward without gradients, batch ${batch}`,
        a: { factory: 'libraryForward', options: { data, threads: 1, batch } },
        b: { factory: 'eagerForward', options: { data, fixture: FIXTURE, threads: 1, batch }, python },
        steps: options.steps, warmup: options.warmup, repeat: Math.max(1, Math.round(64 / batch)), tolerance: 1e-4,
      }));
      console.log(describeEnvironment(environment));
      const results = await runPairs(__filename, [training, ...forwards], environment, (line) => console.error(line));
      console.log(ratioTable(results, 'library', 'pytorch'));
      console.log(`\nthe training step by phase, memory ${allocator}:`);
      console.log(phaseTable(results[0], 'library', 'pytorch'));
      console.log(`library: ${results[0].aDescribe}\npytorch: ${results[0].bDescribe}\n`);
      report.push({ environment, results });
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (options.json) fs.writeFileSync(options.json, JSON.stringify({ benchmark: 'bench:train', date: new Date().toISOString(), runs: report }, null, 2) + '\n');
}

if (process.env.TEE_BENCH_SIDE !== '1') {
  main().catch((error) => {
    console.error(error instanceof Error ? (process.env.BENCH_DEBUG ? error.stack : error.message) : error);
    process.exit(1);
  });
}
