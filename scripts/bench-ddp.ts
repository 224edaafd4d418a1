/**
 * Data-parallel training throughput: the seed's early-exit ResNet-20 (ResNet-20 with the exit
 * after layer1.2.relu2), batch 64 per rank, one intra-op thread per rank, SGD with momentum on
 * the early-exit loss; each rank its own process, as torchrun starts them:
 *
 *   node, 1 rank   trainEarlyExit's step in one process, no process group
 *   node, 2 ranks  the same step through DistributedDataParallel (Gloo over loopback)
 *   torch, 1 rank  scripts/bench_ddp_eager.py: eager PyTorch (Debian's, over the same
 *                  libtorch_cpu.so), Distiller's forward-hook exit, no process group
 *   torch, 2 ranks the same through torch.nn.parallel.DistributedDataParallel
 *
 * Each round runs the four one after another (each from fresh processes, after a barrier and
 * warm-up steps), so that every ratio compares configurations measured minutes apart at most;
 * a configuration's throughput is samples per second over all ranks, the slowest rank's time
 * counting. The table gives medians over rounds and each ratio's range.
 *
 *   npm run bench:ddp -- [--rounds N] [--steps N] [--warmup N] [--allocator as-installed|glibc|tuned] [--json FILE]
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { EarlyExitModel, distributed, earlyExitLoss, jit, nn, optim, torch } from '../lib';
import { packageRoot } from '../lib/util/package-root';
import { allocatorSetting, describeEnvironment, Environment, sideEnvironment } from './bench-harness';
import { median, table } from './bench-stats';
import { flagValue, jsonFile, positiveInt } from './script-args';

const ROOT = packageRoot();
const FIXTURE = path.join(ROOT, 'test', 'fixtures', 'resnet20_scripted.pt');
const BATCH = 64;
const CONFIGS = [
  { name: 'node, 1 rank', side: 'node', ranks: 1 },
  { name: 'node, 2 ranks', side: 'node', ranks: 2 },
  { name: 'torch, 1 rank', side: 'torch', ranks: 1 },
  { name: 'torch, 2 ranks', side: 'torch', ranks: 2 },
] as const;

/** What a rank prints on its last line: its timed steps' milliseconds. */
interface RankReport { rank: number; ms: number }

/** A rank (this script, with RANK set): `steps` timed steps after `warmup`; prints RankReport. */
async function rank(): Promise<void> {
  const [worldSize, rankId] = [Number(process.env.WORLD_SIZE), Number(process.env.RANK)];
  const [steps, warmup] = [Number(process.env.TEE_BENCH_STEPS), Number(process.env.TEE_BENCH_WARMUP)];
  torch.setNumThreads(1);
  torch.manualSeed(1);
  const model = new EarlyExitModel(jit.load(FIXTURE),
    [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]).train();
  if (worldSize > 1) await distributed.initProcessGroup();
  const ddp = worldSize > 1 ? new distributed.DistributedDataParallel(model) : undefined;
  const optimizer = new optim.SGD(model.parameters(), { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 });
  torch.manualSeed(100 + rankId);
  const x = torch.randn([BATCH, 3, 32, 32]);
  const y = torch.randint(0, 10, [BATCH]);
  const step = () => torch.tidy(() => {
    const loss = earlyExitLoss(ddp ? ddp.forward(x) : model.forward(x), y, [0.3]);
    optimizer.zeroGrad();
    loss.backward();
    optimizer.step();
  });
  for (let i = 0; i < warmup; i++) step();
  if (worldSize > 1) await distributed.barrier();
  const started = performance.now();
  for (let i = 0; i < steps; i++) step();
  const ms = performance.now() - started;
  if (worldSize > 1) distributed.destroyProcessGroup();
  console.log(JSON.stringify({ rank: rankId, ms } satisfies RankReport));
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    }).on('error', reject);
  });
}

/** Runs one configuration's ranks at once; resolves with samples per second over all of them. */
async function runConfig(config: typeof CONFIGS[number], environment: Environment, steps: number, warmup: number): Promise<number> {
  const port = await freePort();
  const command = config.side === 'node'
    ? [process.execPath, [__filename]] as const
    : ['/usr/bin/python3', [path.join(ROOT, 'scripts', 'bench_ddp_eager.py')]] as const;
  const reports = await Promise.all(Array.from({ length: config.ranks }, (_, r) => new Promise<RankReport>((resolve, reject) => {
    const child = spawn(command[0], [...command[1]], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env, ...sideEnvironment(environment), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), RANK: String(r),
        LOCAL_RANK: String(r), WORLD_SIZE: String(config.ranks), TEE_BENCH_STEPS: String(steps), TEE_BENCH_WARMUP: String(warmup),
        TEE_BENCH_FIXTURE: FIXTURE,
        // Debian 13's PyTorch 2.6 has no libuv, which its TCPStore asks for by default.
        USE_LIBUV: '0',
      },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => { out += chunk; });
    child.stderr.on('data', (chunk) => { err += chunk; });
    child.on('exit', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('{')) resolve(JSON.parse(last) as RankReport);
      else reject(new Error(`${config.name}, rank ${r} exited with ${code}:\n${err.slice(-2000)}`));
    });
  })));
  return (config.ranks * BATCH * steps) / (Math.max(...reports.map((report) => report.ms)) / 1000);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (name: string) => flagValue(args, name);
  // 30 steps (about 5 s a rank) and 5 rounds: with 10 steps one configuration swung 20% from round to round here.
  const rounds = flag('--rounds') === undefined ? 5 : positiveInt('--rounds', flag('--rounds'));
  const steps = flag('--steps') === undefined ? 30 : positiveInt('--steps', flag('--steps'));
  const warmup = flag('--warmup') === undefined ? 3 : positiveInt('--warmup', flag('--warmup'));
  const environment: Environment = { threads: 1, allocator: allocatorSetting(flag('--allocator'), 'as-installed') };
  const json = flag('--json') === undefined ? undefined : jsonFile(flag('--json'));
  console.log(`bench:ddp: ResNet-20 + seed exit, batch ${BATCH} per rank, SGD on the early-exit loss; ${rounds} round(s) of ` +
    `${warmup} warm-up + ${steps} timed steps per configuration; Gloo over loopback; ${describeEnvironment(environment, 'ranks not pinned (the OS places them)')}`);
  const throughput: Record<string, number[]> = Object.fromEntries(CONFIGS.map((c) => [c.name, []]));
  for (let round = 0; round < rounds; round++) {
    for (const config of CONFIGS) {
      const value = await runConfig(config, environment, steps, warmup);
      throughput[config.name].push(value);
      console.error(`round ${round + 1}: ${config.name}: ${value.toFixed(1)} samples/s`);
    }
  }
  const ratio = (a: string, b: string) => throughput[a].map((v, i) => v / throughput[b][i]);
  const describe = (values: number[]) => `${median(values).toFixed(2)} (${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)})`;
  console.log(table([['configuration', 'samples/s, median', 'range'],
    ...CONFIGS.map((c) => [c.name, median(throughput[c.name]).toFixed(1),
      `${Math.min(...throughput[c.name]).toFixed(1)}–${Math.max(...throughput[c.name]).toFixed(1)}`])], [false, true, true]));
  const ratios = {
    'node: 2 ranks / 1 rank': ratio('node, 2 ranks', 'node, 1 rank'),
    'torch: 2 ranks / 1 rank': ratio('torch, 2 ranks', 'torch, 1 rank'),
    'node / torch, 2 ranks': ratio('node, 2 ranks', 'torch, 2 ranks'),
    'node / torch, 1 rank': ratio('node, 1 rank', 'torch, 1 rank'),
  };
  console.log(table([['ratio of throughputs (same round)', 'median (range)'],
    ...Object.entries(ratios).map(([name, values]) => [name, describe(values)])], [false, true]));
  if (json) fs.writeFileSync(json, JSON.stringify({ environment, rounds, steps, warmup, batch: BATCH, throughput, ratios }, null, 2) + '\n');
}

if (process.env.RANK !== undefined) {
  rank().catch((error) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
} else {
  main().catch((error) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
