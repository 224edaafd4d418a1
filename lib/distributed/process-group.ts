/**
 * Process groups and collectives on PyTorch's c10d (`torch.distributed`): a TCPStore
 * rendezvous and a Gloo process group, made and used off the event loop.
 *
 * ```ts
 * import { distributed, torch } from 'torch-early-exit';
 * await distributed.initProcessGroup({ backend: 'gloo' });   // env://, as `torch-early-exit launch` sets it
 * const t = torch.ones([4]).mul(distributed.getRank() + 1);
 * await distributed.allReduce(t, 'sum');                      // in place, on every rank
 * distributed.destroyProcessGroup();
 * ```
 */
import { binding } from '../binding';
import { Tensor } from '../torch/tensor';

/** `gloo` (CPU tensors). `nccl` needs a CUDA build, which Debian's LibTorch is not. */
export type Backend = 'gloo' | 'nccl';

/** How `allReduce` combines: PyTorch's `ReduceOp` names. `avg` divides the sum by the world size. */
export type ReduceOp = 'sum' | 'avg' | 'max' | 'min' | 'product';

export interface InitProcessGroupOptions {
  /** Default `gloo`. */
  backend?: Backend;
  /**
   * `env://` (default): `MASTER_ADDR` and `MASTER_PORT`, and `RANK` and `WORLD_SIZE` unless
   * given here, as torchrun and `torch-early-exit launch` set them; or `tcp://host:port`.
   */
  initMethod?: string;
  rank?: number;
  worldSize?: number;
  /**
   * How long to wait for the other ranks, at the rendezvous and in every collective
   * (default 30 minutes, PyTorch's). A rank that died fails its peers' collectives at once or
   * within this time.
   */
  timeoutMs?: number;
}

/** Handle of a c10d process group (`native/distributed/process_group.cc`). */
type GroupHandle = unknown;

/** One process group: its rank, its size and the master it met at. */
export class ProcessGroup {
  /** @internal */
  constructor(readonly handle: GroupHandle, readonly rank: number, readonly worldSize: number, readonly backend: Backend,
    readonly master: string) {}
}

const DEFAULT_TIMEOUT_MS = 30 * 60 * 1000;

let defaultGroup: ProcessGroup | undefined;
/** True while an initProcessGroup waits for the other ranks. */
let joining = false;

function integer(name: string, value: unknown, source: string): number {
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
    throw new Error(`initProcessGroup: ${name} must be a whole number ≥ 0, not ${JSON.stringify(value)} (${source})`);
  }
  return n;
}

function fromEnv(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new Error(`initProcessGroup: env:// needs ${name} in the environment (torch-early-exit launch and torchrun set it)`);
  }
  return value;
}

/** Where the ranks meet, and who this one is. */
function rendezvous(options: InitProcessGroupOptions): { host: string; port: number; rank: number; worldSize: number } {
  const method = options.initMethod ?? 'env://';
  let host: string;
  let port: number;
  let rank = options.rank;
  let worldSize = options.worldSize;
  if (method === 'env://') {
    host = fromEnv('MASTER_ADDR');
    port = integer('MASTER_PORT', fromEnv('MASTER_PORT'), 'the environment');
    rank ??= integer('RANK', fromEnv('RANK'), 'the environment');
    worldSize ??= integer('WORLD_SIZE', fromEnv('WORLD_SIZE'), 'the environment');
  } else {
    const tcp = /^tcp:\/\/(\[[^\]]+\]|[^:/]+):(\d+)\/?$/.exec(method);
    if (!tcp) throw new Error(`initProcessGroup: initMethod must be 'env://' or 'tcp://host:port', not '${method}'`);
    host = tcp[1].replace(/^\[|\]$/g, '');
    port = Number(tcp[2]);
    if (rank === undefined || worldSize === undefined) throw new Error(`initProcessGroup: ${method} needs rank and worldSize`);
  }
  rank = integer('rank', rank, 'the options');
  worldSize = integer('worldSize', worldSize, 'the options');
  if (worldSize < 1 || rank >= worldSize) throw new Error(`initProcessGroup: rank ${rank} is not in a world of ${worldSize}`);
  if (port < 1 || port > 65535) throw new Error(`initProcessGroup: port ${port} is not a TCP port`);
  return { host, port, rank, worldSize };
}

/**
 * Joins the default process group (PyTorch's `init_process_group`): resolves once every
 * rank has arrived, or rejects after `timeoutMs` naming the master it could not reach.
 */
export async function initProcessGroup(options: InitProcessGroupOptions = {}): Promise<ProcessGroup> {
  if (defaultGroup || joining) {
    throw new Error(`initProcessGroup: the default process group is already ${joining ? 'being made' : 'initialized (destroyProcessGroup() first)'}`);
  }
  const backend = options.backend ?? 'gloo';
  if (backend === 'nccl') {
    throw new Error(`initProcessGroup: the nccl backend needs CUDA tensors and a CUDA build; this addon is built against LibTorch ${binding.libtorchVersion} ` +
      `${binding.builtWithCuda ? 'with' : 'without'} CUDA and has no NCCL process group: use backend 'gloo'`);
  }
  if (backend !== 'gloo') throw new Error(`initProcessGroup: backend must be 'gloo' or 'nccl', not '${String(backend)}'`);
  if (!binding.builtWithGloo) {
    throw new Error('initProcessGroup: this build of the addon has no Gloo process group: it was compiled without Gloo\'s headers ' +
      '(Debian: apt-get install libgloo-dev, then npm run build:native in the package folder)');
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error(`initProcessGroup: timeoutMs must be a positive number, not ${timeoutMs}`);
  const { host, port, rank, worldSize } = rendezvous(options);
  joining = true;
  try {
    const handle = await binding.createProcessGroup(host, port, rank, worldSize, Math.ceil(timeoutMs));
    defaultGroup = new ProcessGroup(handle, rank, worldSize, backend, `${host}:${port}`);
    return defaultGroup;
  } finally {
    joining = false;
  }
}

/** Whether `initProcessGroup` has made the default group. */
export function isInitialized(): boolean {
  return defaultGroup !== undefined;
}

/** The default group, or an error that says `what` needs one. */
export function defaultProcessGroup(what: string): ProcessGroup {
  if (!defaultGroup) throw new Error(`${what}: no process group (call await distributed.initProcessGroup() first)`);
  return defaultGroup;
}

/** Leaves the default group: waits for its queued collectives and closes its connections. */
export function destroyProcessGroup(): void {
  const group = defaultProcessGroup('destroyProcessGroup');
  defaultGroup = undefined;
  binding.destroyProcessGroup(group.handle);
}

export function getRank(): number { return defaultProcessGroup('getRank').rank; }
export function getWorldSize(): number { return defaultProcessGroup('getWorldSize').worldSize; }

/** Combines `tensor` across the ranks, in place on every rank (`dist.all_reduce`). */
export function allReduce(tensor: Tensor, op: ReduceOp = 'sum', group?: ProcessGroup): Promise<void> {
  return binding.allReduce((group ?? defaultProcessGroup('allReduce')).handle, tensor.native, op);
}

/** Copies `tensor` of rank `src` into `tensor` of every other rank (`dist.broadcast`). */
export function broadcast(tensor: Tensor, src: number, group?: ProcessGroup): Promise<void> {
  const g = group ?? defaultProcessGroup('broadcast');
  if (!Number.isInteger(src) || src < 0 || src >= g.worldSize) throw new Error(`broadcast: src ${src} is not a rank of a world of ${g.worldSize}`);
  return binding.broadcast(g.handle, tensor.native, src);
}

/** Every rank's `tensor`, in rank order (`dist.all_gather`). */
export async function allGather(tensor: Tensor, group?: ProcessGroup): Promise<Tensor[]> {
  const natives = await binding.allGather((group ?? defaultProcessGroup('allGather')).handle, tensor.native);
  return natives.map((native) => new Tensor(native));
}

/** Resolves once every rank has called it (`dist.barrier`). */
export function barrier(group?: ProcessGroup): Promise<void> {
  return binding.barrier((group ?? defaultProcessGroup('barrier')).handle);
}
