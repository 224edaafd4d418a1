/**
 * `torch-early-exit launch`: torchrun's environment, the `[rank R]: ` output, stopping the other
 * ranks when one fails, and passing signals on. Runs bin/torch-early-exit.js (dist/, from
 * `npm run build:ts`) over test/workers/launch-child.js.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'child_process';
import * as path from 'path';

const CLI = path.join(__dirname, '..', 'bin', 'torch-early-exit.js');
const CHILD = path.join(__dirname, 'workers', 'launch-child.js');

interface Run { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** A port no test shares; the children never open it. */
function randomPort(): number {
  return 20000 + Math.floor(Math.random() * 40000);
}

/** Starts the launcher; `done` resolves once it has exited and its output is in. */
function start(args: string[], env: NodeJS.ProcessEnv = process.env): { child: ChildProcessWithoutNullStreams; output: () => Run; done: Promise<Run> } {
  const child = spawn(process.execPath, [CLI, 'launch', ...args], { env });
  const run: Run = { code: null, signal: null, stdout: '', stderr: '' };
  child.stdout.on('data', (chunk: Buffer) => { run.stdout += chunk.toString(); });
  child.stderr.on('data', (chunk: Buffer) => { run.stderr += chunk.toString(); });
  // A launcher that does not stop would hang the test: kill it (its ranks give up after 20 s).
  const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
  const done = new Promise<Run>((resolve) => child.on('close', (code, signal) => {
    clearTimeout(timer);
    resolve({ ...run, code, signal });
  }));
  return { child, output: () => run, done };
}

/** Resolves once `test` holds for the launcher's stdout so far (polling), failing after 15 s. */
async function until(run: () => Run, test: (stdout: string) => boolean): Promise<void> {
  const deadline = Date.now() + 15000;
  while (!test(run().stdout)) {
    if (Date.now() > deadline) throw new Error(`timed out; stdout so far:\n${run().stdout}\nstderr:\n${run().stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The JSON line each rank printed, by rank. */
function reports(stdout: string): Map<number, { env: Record<string, string | undefined>; argv: string[] }> {
  const found = new Map<number, { env: Record<string, string | undefined>; argv: string[] }>();
  for (const match of stdout.matchAll(/^\[rank (\d+)\]: (\{.*\})$/gm)) found.set(Number(match[1]), JSON.parse(match[2]));
  return found;
}

jest.setTimeout(30000);

describe('torch-early-exit launch', () => {
  it('gives each rank torchrun\'s environment and prints its lines behind [rank R]: ', async () => {
    const port = randomPort();
    const env = { ...process.env };
    delete env.OMP_NUM_THREADS;
    const run = await start(['--nproc-per-node', '2', `--master-port=${port}`, CHILD, 'partial', '--nproc-per-node', '9'], env).done;
    expect(run.stderr).not.toMatch(/rank \d+ .*(exited|killed)/);
    expect(run.code).toBe(0);
    const ranks = reports(run.stdout);
    expect([...ranks.keys()].sort()).toEqual([0, 1]);
    for (const rank of [0, 1]) {
      expect(ranks.get(rank)!.env).toEqual({
        RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: '2', LOCAL_WORLD_SIZE: '2', GROUP_RANK: '0',
        MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), OMP_NUM_THREADS: '1',
      });
      // Options after the script are the script's.
      expect(ranks.get(rank)!.argv).toEqual(['partial', '--nproc-per-node', '9']);
      // A last line without a newline still comes out, whole and prefixed.
      expect(run.stderr).toContain(`[rank ${rank}]: no newline at the end\n`);
    }
    expect(run.stdout.split('\n').filter((line) => line !== '').every((line) => /^\[rank [01]\]: /.test(line))).toBe(true);
    expect(run.stderr).toMatch(/OMP_NUM_THREADS=1/);
  });

  it('keeps OMP_NUM_THREADS when set, defaults to one rank, and takes --master-addr', async () => {
    const run = await start(['--master-addr', '10.1.2.3', '--master-port', String(randomPort()), CHILD], { ...process.env, OMP_NUM_THREADS: '3' }).done;
    expect(run.code).toBe(0);
    const ranks = reports(run.stdout);
    expect([...ranks.keys()]).toEqual([0]);
    expect(ranks.get(0)!.env).toMatchObject({ RANK: '0', WORLD_SIZE: '1', MASTER_ADDR: '10.1.2.3', OMP_NUM_THREADS: '3' });
    expect(run.stderr).not.toMatch(/OMP_NUM_THREADS/);
  });

  it('stops the other ranks with SIGTERM when one fails, and exits with its code', async () => {
    const started = Date.now();
    const run = await start(['--nproc-per-node', '2', '--master-port', String(randomPort()), CHILD, 'hang', 'exit-rank', '1', '3']).done;
    expect(run.stdout).toContain('[rank 0]: ready\n');
    expect(run.stdout).toContain('[rank 0]: got SIGTERM\n');
    expect(run.stderr).toMatch(/^torch-early-exit launch: rank 1 \(pid \d+\) exited with code 3; stopping the other ranks$/m);
    expect(run.stderr).not.toMatch(/rank 0 \(pid/);
    expect(run.code).toBe(3);
    expect(Date.now() - started).toBeLessThan(5000); // rank 0 left on SIGTERM, not at the SIGKILL
  });

  it('exits 128 + the signal number when a rank is killed by a signal', async () => {
    const run = await start(['--master-port', String(randomPort()), CHILD, 'kill-self']).done;
    expect(run.stderr).toMatch(/rank 0 \(pid \d+\) was killed by SIGTERM$/m);
    expect(run.code).toBe(143);
  });

  it('passes SIGINT on to every rank and exits non-zero', async () => {
    const launcher = start(['--nproc-per-node', '2', '--master-port', String(randomPort()), CHILD, 'hang']);
    await until(launcher.output, (stdout) => stdout.includes('[rank 0]: ready') && stdout.includes('[rank 1]: ready'));
    launcher.child.kill('SIGINT');
    const run = await launcher.done;
    expect(run.stdout).toContain('[rank 0]: got SIGINT\n');
    expect(run.stdout).toContain('[rank 1]: got SIGINT\n');
    expect(run.stdout).not.toContain('got SIGTERM');
    expect(run.code).toBe(130);
  });

  it('reports usage errors with exit code 2', async () => {
    const bad = [['--nproc-per-node', '0', CHILD], ['--nproc-per-node=two', CHILD], ['--master-port', '70000', CHILD], ['--bogus', CHILD]];
    const [missing, help, ...runs] = await Promise.all([['--nproc-per-node', '2'], ['--help'], ...bad].map((args) => start(args).done));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^torch-early-exit launch: the script to run is missing\n\nUsage: torch-early-exit launch/);
    runs.forEach((run, i) => {
      expect([bad[i], run.code]).toEqual([bad[i], 2]);
      expect(run.stderr).toMatch(/Usage: torch-early-exit launch/);
      expect(run.stdout).toBe('');
    });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--nproc-per-node N/);
  });
});

describe('torch-early-exit launch with a real process group', () => {
  it('two ranks meet through env:// (the launcher\'s variables) and all-reduce', async () => {
    const fs = await import('fs');
    const os = await import('os');
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-launch-'));
    const script = path.join(folder, 'all-reduce.js');
    fs.writeFileSync(script, `
const { distributed, torch } = require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'lib'))});
(async () => {
  await distributed.initProcessGroup({ timeoutMs: 10000 });
  const t = torch.tensor([distributed.getRank() + 1], { dtype: 'float32' });
  await distributed.allReduce(t, 'sum');
  console.log('sum ' + t.item() + ' of ' + distributed.getWorldSize());
  distributed.destroyProcessGroup();
})();`);
    try {
      const run = await start(['--nproc-per-node', '2', '--master-port', String(randomPort()), script]).done;
      expect({ code: run.code, stderr: run.code === 0 ? '' : run.stderr }).toEqual({ code: 0, stderr: '' });
      expect(run.stdout).toMatch(/^\[rank 0\]: sum 3 of 2$/m);
      expect(run.stdout).toMatch(/^\[rank 1\]: sum 3 of 2$/m);
    } finally {
      fs.rmSync(folder, { recursive: true, force: true });
    }
  });
});
