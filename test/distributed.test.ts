/**
 * c10d process groups, collectives and DistributedDataParallel with real ranks: each rank is
 * its own Node process (test/workers/ddp-rank.js, the compiled library) in a Gloo group over
 * loopback. References are computed here, in one process, another way: by hand for the
 * collectives, and for DDP by running both halves of the batch and averaging their gradients.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as lib from '../lib';
import { DistributedSampler } from '../lib/distributed';
import { FIXTURES, python, pythonWithTorch } from './helpers';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const recipe = require('./workers/ddp-recipe');

const ROOT = path.join(__dirname, '..');
const LIB = path.join(ROOT, 'dist', 'lib');
const RANK = path.join(__dirname, 'workers', 'ddp-rank.js');

jest.setTimeout(120_000);

/** A port nobody listens on now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

interface RankRun { code: number | null; stderr: string; ms: number; result?: any }

/** Runs `world` ranks of ddp-rank.js in `mode`; resolves when all have exited. */
async function runRanks(world: number, mode: string, options: Record<string, unknown> = {}, ranks = [...Array(world).keys()], port?: number): Promise<RankRun[]> {
  const usedPort = port ?? await freePort();
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-ddp-'));
  try {
    return await Promise.all(ranks.map((rank) => new Promise<RankRun>((resolve) => {
      const out = path.join(folder, `rank-${rank}.json`);
      const started = Date.now();
      const child = spawn(process.execPath, [RANK, LIB, FIXTURES, String(usedPort), String(rank), String(world), mode, out, JSON.stringify(options)],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, OMP_NUM_THREADS: '1' } });
      let stderr = '';
      child.stderr.on('data', (chunk) => { stderr += chunk; });
      child.on('exit', (code) => resolve({
        code, stderr, ms: Date.now() - started, result: fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : undefined,
      }));
    })));
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
}

/** Every rank exited 0 and printed no error line. */
function expectClean(runs: RankRun[]): void {
  for (const run of runs) expect({ code: run.code, stderr: run.stderr.split('\n').filter((l) => l.startsWith('rank')) }).toEqual({ code: 0, stderr: [] });
}

/** A snapshot without batch-norm statistics, which stay each rank's own until the next forward. */
function parametersOnly(snapshot: Record<string, number[]>): Record<string, number[]> {
  return Object.fromEntries(Object.entries(snapshot).filter(([n]) => !/running_|num_batches/.test(n)));
}

function maxDiff(a: Record<string, number[]>, b: Record<string, number[]>): number {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  let worst = 0;
  for (const name of Object.keys(a)) {
    expect(a[name].length).toBe(b[name].length);
    for (let i = 0; i < a[name].length; i++) worst = Math.max(worst, Math.abs(a[name][i] - b[name][i]));
  }
  return worst;
}

describe('process groups and collectives', () => {
  it('allReduce (sum, avg, max), broadcast, allGather and barrier across three ranks equal their definitions', async () => {
    const runs = await runRanks(3, 'collectives');
    for (const run of runs) expect(run.stderr.split('\n').filter((l) => l.startsWith('rank'))).toEqual([]);
    for (const [rank, run] of runs.entries()) {
      expect({ rank, code: run.code }).toEqual({ rank, code: 0 });
      // Ranks multiply [1, 2, 3] by 1, 2 and 3.
      expect(run.result.sum).toEqual([6, 12, 18]);
      expect(run.result.avg).toEqual([2, 4, 6]);
      expect(run.result.max).toEqual([2, 0]);
      expect(run.result.fromLast).toEqual([21]);
      expect(run.result.gathered).toEqual([[0, 0], [1, 1], [2, 4]]);
    }
    // Rank 0 waited 300 ms at the barrier for rank 1 with its event loop turning (a 10 ms timer).
    expect(runs[0].result.turns).toBeGreaterThanOrEqual(10);
  });

  it('a rank that cannot reach the master fails within the timeout, naming the master', async () => {
    const port = await freePort();
    const [run] = await runRanks(2, 'collectives', { timeoutMs: 2000 }, [1], port);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`could not reach the master at 127.0.0.1:${port} within 2000 ms`);
    expect(run.ms).toBeLessThan(15_000);
  });

  it('a master whose peers never come fails within the timeout, saying they did not connect', async () => {
    const port = await freePort();
    const [run] = await runRanks(2, 'collectives', { timeoutMs: 2000 }, [0], port);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`initProcessGroup (rank 0 of 2): the ranks did not all connect at 127.0.0.1:${port} within 2000 ms`);
    expect(run.ms).toBeLessThan(15_000);
  });

  it('initProcessGroup rejects bad settings before any connection, each with its reason', async () => {
    const { distributed } = lib;
    await expect(distributed.initProcessGroup({ initMethod: 'tcp://127.0.0.1:1', rank: 2, worldSize: 2 })).rejects.toThrow('rank 2 is not in a world of 2');
    await expect(distributed.initProcessGroup({ initMethod: 'file:///tmp/x', rank: 0, worldSize: 1 })).rejects.toThrow("'env://' or 'tcp://host:port'");
    await expect(distributed.initProcessGroup({ backend: 'nccl' })).rejects.toThrow('nccl');
    const saved = process.env.MASTER_ADDR;
    delete process.env.MASTER_ADDR;
    await expect(distributed.initProcessGroup()).rejects.toThrow('env:// needs MASTER_ADDR');
    if (saved !== undefined) process.env.MASTER_ADDR = saved;
    expect(() => distributed.getRank()).toThrow('no process group');
  });
});

describe('DistributedDataParallel', () => {
  const steps = 3;

  /** One process: both halves' gradients, averaged, and rank 0's batch-norm buffers (PyTorch DDP's semantics). */
  function halvesByHand(bn: 'train' | 'eval'): Record<string, number[]> {
    const model = recipe.makeModel(lib, FIXTURES, { bn });
    const optimizer = recipe.makeOptimizer(lib, model);
    const { x, y } = recipe.makeData(lib);
    const half = x.shape[0] / 2;
    for (let step = 0; step < steps; step++) {
      optimizer.zeroGrad();
      const buffers = model.buffers();
      const start = buffers.map((t: lib.Tensor) => t.clone());
      let rank0: lib.Tensor[] = [];
      for (const r of [0, 1]) {
        // Each rank starts from rank 0's buffers, normalises with its own half's statistics.
        lib.torch.noGrad(() => buffers.forEach((t: lib.Tensor, i: number) => t.copy_(start[i])));
        recipe.loss(lib, model.forward(x.narrow(0, r * half, half)), y.narrow(0, r * half, half)).backward();
        if (r === 0) rank0 = buffers.map((t: lib.Tensor) => t.clone());
      }
      lib.torch.noGrad(() => {
        buffers.forEach((t: lib.Tensor, i: number) => t.copy_(rank0[i]));
        for (const p of model.parameters()) p.grad!.mul_(0.5);
      });
      optimizer.step();
    }
    return recipe.snapshot(model);
  }

  /** One process on the whole batch. */
  function wholeBatch(bn: 'train' | 'eval'): Record<string, number[]> {
    const model = recipe.makeModel(lib, FIXTURES, { bn });
    const optimizer = recipe.makeOptimizer(lib, model);
    const { x, y } = recipe.makeData(lib);
    for (let step = 0; step < steps; step++) {
      optimizer.zeroGrad();
      recipe.loss(lib, model.forward(x), y).backward();
      optimizer.step();
    }
    return recipe.snapshot(model);
  }

  it.each(['train', 'eval'] as const)('two ranks, each on half the batch, end %s-mode batch norm with the parameters of the halves averaged in one process', async (bn) => {
    const runs = await runRanks(2, 'ddp', { steps, bn });
    expectClean(runs);
    const [r0, r1] = runs.map((run) => run.result.snapshot as Record<string, number[]>);
    // Rank 1 started perturbed: only rank 0's broadcast and the averaged gradients make them equal.
    expect(maxDiff(parametersOnly(r0), parametersOnly(r1))).toBe(0);
    const reference = halvesByHand(bn);
    expect(maxDiff(r0, reference)).toBeLessThanOrEqual(1e-5);
    if (bn === 'eval') expect(maxDiff(parametersOnly(r0), parametersOnly(wholeBatch('eval')))).toBeLessThanOrEqual(1e-5);
    // The seed model's 1.1 MB of parameters: a first bucket of 1 MB, then the rest, in reverse order.
    const buckets = runs[0].result.buckets as string[][];
    expect(buckets.length).toBe(2);
    expect(buckets[0][0]).toBe('exits.0.2.bias');
    expect(buckets.flat().sort()).toEqual(lib.torch.noGrad(() => recipe.makeModel(lib, FIXTURES).namedParameters().map(([n]: [string]) => n)).sort());
  });

  it.each(['train', 'eval'] as const)('two ranks end %s-mode batch norm with the parameters of PyTorch\'s DistributedDataParallel on the same data', async (bn) => {
    const runs = await runRanks(2, 'ddp', { steps, bn });
    expect(runs.map((run) => run.code)).toEqual([0, 0]);
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-ddp-python-'));
    try {
      const model = recipe.makeModel(lib, FIXTURES);
      const { x, y } = recipe.makeData(lib);
      lib.torch.save({ ...Object.fromEntries([...model.namedParameters(), ...model.namedBuffers()]), x, y }, path.join(folder, 'state.pt'));
      const { execFileSync } = await import('child_process');
      execFileSync(pythonWithTorch(), [path.join(__dirname, 'workers', 'ddp_python.py'), ROOT, String(await freePort()),
        path.join(folder, 'state.pt'), path.join(folder, 'python.json'), String(steps), bn], {
          stdio: ['ignore', 'ignore', 'pipe'],
          // Debian 13's PyTorch 2.6 has no libuv, which its TCPStore asks for by default.
          env: { ...process.env, OMP_NUM_THREADS: '1', USE_LIBUV: '0' },
        });
      const theirs = JSON.parse(fs.readFileSync(path.join(folder, 'python.json'), 'utf8')) as Record<string, number[]>;
      const ours = runs[0].result.snapshot as Record<string, number[]>;
      // PyTorch's DDP keeps its own buffers: compare parameters and the batch-norm statistics alike.
      expect(maxDiff(ours, theirs)).toBeLessThanOrEqual(1e-5);
    } finally {
      fs.rmSync(folder, { recursive: true, force: true });
    }
  });

  it('trainEarlyExit trains each rank on its own shard and ends the ranks equal; rank 0 alone writes the checkpoint, all load it', async () => {
    const checkpoint = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-ddp-ckpt-')), 'checkpoint');
    const runs = await runRanks(2, 'train', { checkpoint });
    expect(fs.existsSync(path.join(`${checkpoint}-r0`, 'checkpoint.json'))).toBe(true);
    expect(fs.existsSync(`${checkpoint}-r1`)).toBe(false);
    fs.rmSync(path.dirname(checkpoint), { recursive: true, force: true });
    expect(runs.map((run) => run.result.loadedDiff)).toEqual([0, 0]);
    expectClean(runs);
    // 40 samples over two ranks: 20 each, five batches of 4.
    expect(runs.map((run) => run.result.batches)).toEqual([5, 5]);
    const [r0, r1] = runs.map((run) => run.result.snapshot as Record<string, number[]>);
    expect(maxDiff(parametersOnly(r0), parametersOnly(r1))).toBe(0);
    // And they trained: rank 0's parameters moved from where they started.
    expect(maxDiff(parametersOnly(r0), parametersOnly(lib.torch.noGrad(() => recipe.snapshot(recipe.makeModel(lib, FIXTURES)))))).toBeGreaterThan(1e-3);
  });

  it('leaves frozen parameters out, and a world of one trains exactly as without it', async () => {
    const { distributed } = lib;
    await distributed.initProcessGroup({ initMethod: `tcp://127.0.0.1:${await freePort()}`, rank: 0, worldSize: 1, timeoutMs: 10_000 });
    try {
      const frozen = recipe.makeModel(lib, FIXTURES).freezeBackbone();
      const exitsOnly = new distributed.DistributedDataParallel(frozen);
      expect(exitsOnly.buckets()).toEqual([['exits.0.2.bias', 'exits.0.2.weight']]);
      exitsOnly.dispose();

      const train = (wrap: boolean) => {
        const model = recipe.makeModel(lib, FIXTURES);
        const ddp = wrap ? new distributed.DistributedDataParallel(model) : undefined;
        const optimizer = recipe.makeOptimizer(lib, model);
        const { x, y } = recipe.makeData(lib);
        for (let step = 0; step < 2; step++) {
          optimizer.zeroGrad();
          recipe.loss(lib, ddp ? ddp.forward(x) : model.forward(x), y).backward();
          optimizer.step();
        }
        ddp?.dispose();
        return recipe.snapshot(model);
      };
      expect(maxDiff(train(true), train(false))).toBe(0);
    } finally {
      distributed.destroyProcessGroup();
    }
  });

  it('a rank that dies mid-training ends the other with an error naming the lost peer, well within the timeout', async () => {
    const runs = await runRanks(2, 'die', { steps: 3, timeoutMs: 10_000 });
    expect(runs[1].code).toBe(7);
    expect(runs[0].code).toBe(1);
    expect(runs[0].stderr).toMatch(/rank 0: .*failed on rank 0 of 2: (a peer process left the group \(rank 1, the only other rank\)|no answer from a peer within the group's timeout of 10000 ms)/);
    expect(runs[0].ms).toBeLessThan(30_000);
  });
});

describe('DistributedSampler', () => {
  it.each([[10, 3, false], [10, 3, true], [7, 2, false], [2, 4, false]])('shards %i samples over %i ranks (dropLast %s) as PyTorch\'s does, epoch by epoch', (size, world, dropLast) => {
    const ours = [0, 1].map((epoch) => [...Array(world).keys()].map((rank) => {
      const sampler = new DistributedSampler(size, { numReplicas: world, rank, seed: 5, dropLast });
      sampler.setEpoch(epoch);
      return sampler.indices();
    }));
    const theirs = JSON.parse(python(`
import json, torch
from torch.utils.data import DistributedSampler
out = []
for epoch in (0, 1):
    row = []
    for rank in range(${world}):
        s = DistributedSampler(range(${size}), num_replicas=${world}, rank=rank, seed=5, drop_last=${dropLast ? 'True' : 'False'})
        s.set_epoch(epoch)
        row.append(list(s))
    out.append(row)
print(json.dumps(out))`));
    expect(ours).toEqual(theirs);
    if (size >= 7) expect(ours[0]).not.toEqual(ours[1]);
  });
});
