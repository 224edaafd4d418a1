/**
 * `torch-early-exit launch [options] SCRIPT [args...]`: PyTorch's torchrun on one node. Starts
 * --nproc-per-node copies of `node SCRIPT args...`, each with torchrun's environment (MASTER_ADDR,
 * MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK) for `initProcessGroup`'s
 * env:// rendezvous, and prints their output line by line behind `[rank R]: `. When one rank fails
 * the others get SIGTERM (SIGKILL 5 s later) and the launcher exits with the failed rank's code;
 * SIGINT and SIGTERM are passed on to every rank.
 */
import { ChildProcess, spawn } from 'child_process';
import * as os from 'os';
import { StringDecoder } from 'string_decoder';
import { UsageError, parseCommand } from './args';

export const LAUNCH_USAGE = `Usage: torch-early-exit launch [options] SCRIPT [args...]

Runs SCRIPT (with args) in --nproc-per-node Node.js processes on this machine, as PyTorch's
torchrun does: each gets MASTER_ADDR, MASTER_PORT, RANK and LOCAL_RANK (0..N-1), WORLD_SIZE and
LOCAL_WORLD_SIZE (N) and GROUP_RANK (0) in its environment, and OMP_NUM_THREADS=1 when N > 1 and it
is unset. Their output is printed behind '[rank R]: '. When a rank fails the others are stopped
(SIGTERM, then SIGKILL after 5 s) and its exit code is the launcher's; SIGINT and SIGTERM are
passed on to every rank.

Options (the first other argument is SCRIPT; --opt=value works too):
  --nproc-per-node N     processes to start (default 1)
  --master-addr A        the rendezvous address, rank 0's (default 127.0.0.1)
  --master-port P        the rendezvous port (default 29500)
  -h, --help             this text`;

/** How long stopped ranks have to exit after SIGTERM (or the forwarded signal) before SIGKILL. */
const GRACE_MS = 5000;

interface LaunchOptions {
  nprocPerNode: number; masterAddr: string; masterPort: number; script: string; args: string[];
}

function parseLaunchArgs(argv: readonly string[]): LaunchOptions | null {
  const options = { nprocPerNode: 1, masterAddr: '127.0.0.1', masterPort: 29500 };
  const integer = (flag: string, value: string, min: number, max: number): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) throw new UsageError(`${flag} needs a whole number from ${min} to ${max}, got '${value}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') i++;
    else if (arg.startsWith('-') && arg !== '-') {
      const equals = arg.indexOf('=');
      // torchrun spells them --nproc_per_node and --nproc-per-node alike.
      const flag = (equals < 0 ? arg : arg.slice(0, equals)).replace(/_/g, '-');
      if (flag === '-h' || flag === '--help') return null;
      if (flag !== '--nproc-per-node' && flag !== '--master-addr' && flag !== '--master-port') throw new UsageError(`unknown option '${arg}'`);
      const value = equals < 0 ? argv[++i] : arg.slice(equals + 1);
      if (value === undefined || value === '') throw new UsageError(`${flag} needs a value`);
      if (flag === '--nproc-per-node') options.nprocPerNode = integer(flag, value, 1, 1024);
      else if (flag === '--master-port') options.masterPort = integer(flag, value, 1, 65535);
      else options.masterAddr = value;
      continue;
    }
    if (i >= argv.length) break;
    return { ...options, script: argv[i], args: argv.slice(i + 1) };
  }
  throw new UsageError('the script to run is missing');
}

/** Writes a stream's text to `out`, each whole line behind `prefix`; the rest once it ends. */
function forwardLines(stream: NodeJS.ReadableStream, out: NodeJS.WritableStream, prefix: string): void {
  const decoder = new StringDecoder('utf8');
  let pending = '';
  stream.on('data', (chunk: Buffer) => {
    const lines = (pending + decoder.write(chunk)).split('\n');
    pending = lines.pop()!;
    if (lines.length > 0) out.write(lines.map((line) => `${prefix}${line}\n`).join(''));
  });
  stream.on('end', () => {
    const rest = pending + decoder.end();
    pending = '';
    if (rest !== '') out.write(`${prefix}${rest}\n`);
  });
}

/** 143 for SIGTERM: the shell's code for a process that a signal ended. */
function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (os.constants.signals[signal] ?? 0);
}

/** Runs `launch` until every rank has exited; resolves to the exit code. */
export async function launch(argv: readonly string[]): Promise<number> {
  const options = parseCommand('launch', LAUNCH_USAGE, () => parseLaunchArgs(argv));
  if (typeof options === 'number') return options;
  const worldSize = options.nprocPerNode;
  const shared: NodeJS.ProcessEnv = {
    ...process.env, MASTER_ADDR: options.masterAddr, MASTER_PORT: String(options.masterPort),
    WORLD_SIZE: String(worldSize), LOCAL_WORLD_SIZE: String(worldSize), GROUP_RANK: '0',
  };
  if (worldSize > 1 && process.env.OMP_NUM_THREADS === undefined) {
    shared.OMP_NUM_THREADS = '1';
    console.error('torch-early-exit launch: setting OMP_NUM_THREADS=1 for each process so that ' +
      `${worldSize} of them do not overload the machine; set it yourself to tune it`);
  }
  // Each rank leads its own process group, as under torchrun, so that a terminal's Ctrl-C reaches it
  // once (through the launcher) and a stop reaches the processes it started too.
  const ownGroup = process.platform !== 'win32';
  const children: ChildProcess[] = [];
  const alive = new Set<number>();
  let outcome: { code: number } | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  const signalRank = (rank: number, signal: NodeJS.Signals) => {
    const child = children[rank];
    if (!alive.has(rank) || child.pid === undefined) return;
    try {
      if (ownGroup) process.kill(-child.pid, signal);
      else child.kill(signal);
    } catch {
      child.kill(signal); // the group is gone: the rank itself may not be yet
    }
  };
  const stopAll = (signal: NodeJS.Signals) => {
    for (const rank of alive) signalRank(rank, signal);
    killTimer ??= setTimeout(() => { for (const rank of alive) signalRank(rank, 'SIGKILL'); }, GRACE_MS);
  };
  const onSignal = (signal: NodeJS.Signals) => {
    outcome ??= { code: signalExitCode(signal) };
    stopAll(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const ranks = Array.from({ length: worldSize }, (_, rank) => new Promise<boolean>((resolve) => {
    const child = spawn(process.execPath, [options.script, ...options.args], {
      env: { ...shared, RANK: String(rank), LOCAL_RANK: String(rank) },
      stdio: ['inherit', 'pipe', 'pipe'], detached: ownGroup,
    });
    children[rank] = child;
    alive.add(rank);
    forwardLines(child.stdout!, process.stdout, `[rank ${rank}]: `);
    forwardLines(child.stderr!, process.stderr, `[rank ${rank}]: `);
    const exited = (code: number | null, signal: NodeJS.Signals | null, error?: Error) => {
      if (!alive.delete(rank)) return;
      const ok = code === 0 && !error;
      if (!ok && outcome === undefined) {
        outcome = { code: error ? 1 : signal ? signalExitCode(signal) : code ?? 1 };
        const how = error ? `could not start (${error.message})` : signal ? `was killed by ${signal}` : `exited with code ${code}`;
        console.error(`torch-early-exit launch: rank ${rank} (pid ${child.pid ?? '-'}) ${how}` +
          `${alive.size > 0 ? '; stopping the other ranks' : ''}`);
        stopAll('SIGTERM');
      }
      if (alive.size === 0 && killTimer) clearTimeout(killTimer);
    };
    child.on('exit', (code, signal) => exited(code, signal));
    child.on('error', (error) => { exited(null, null, error); resolve(false); });
    child.on('close', (code) => resolve(code === 0));
  }));
  try {
    const succeeded = await Promise.all(ranks);
    return succeeded.every(Boolean) ? 0 : outcome?.code ?? 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (killTimer) clearTimeout(killTimer);
  }
}
