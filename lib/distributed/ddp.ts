/**
 * `DistributedDataParallel` around an `EarlyExitModel` (backbone and exit branches), as
 * PyTorch's: parameters and buffers broadcast from rank 0 when it is made; each forward with
 * gradients on first broadcasts the buffers (batch-norm statistics) from rank 0; backward
 * copies each gradient, as it is produced, into buckets (the first 1 MB, then `bucketCapMb`,
 * in reverse parameter order) that are all-reduced on c10d's threads while backward goes on,
 * and backward ends once every bucket is averaged into the gradients.
 *
 * Why hooks and not c10d's `Reducer`: LibTorch has no C++ DDP (pytorch/pytorch#48959) and the
 * `Reducer` is internal, its constructor changed between 1.13 and 2.6; `Tensor::register_hook`,
 * the autograd engine's final callback and `ProcessGroup::allreduce` are the same in both.
 *
 * ```ts
 * await distributed.initProcessGroup();
 * const ddp = new distributed.DistributedDataParallel(model);
 * trainEarlyExit(ddp, data, { epochs: 1, lossWeights: [0.3] });   // each rank on its shard
 * ```
 */
import { binding } from '../binding';
import { EarlyExitModel } from '../early-exit/model';
import { SaveCheckpointOptions, saveCheckpoint } from '../early-exit/checkpoint';
import { Tensor } from '../torch/tensor';
import { isGradEnabled } from '../torch/torch';
import { ProcessGroup, barrier, defaultProcessGroup } from './process-group';

export interface DistributedDataParallelOptions {
  /** Default: the default group (`initProcessGroup`). */
  processGroup?: ProcessGroup;
  /** Bucket size in MiB (default 25, PyTorch's); the first bucket is 1 MiB, as in PyTorch. */
  bucketCapMb?: number;
  /** Broadcast buffers from rank 0 before each forward with gradients on (default true, PyTorch's). */
  broadcastBuffers?: boolean;
}

const FIRST_BUCKET_BYTES = 1024 * 1024;

export class DistributedDataParallel {
  readonly processGroup: ProcessGroup;
  readonly broadcastBuffers: boolean;
  /** The trainable parameters whose gradients are averaged (frozen ones are left out). */
  private readonly params: Array<[string, Tensor]>;
  /** The module's buffers (batch-norm statistics), looked up once: every forward with gradients broadcasts them. */
  private readonly buffers: Tensor[];
  private reducer: unknown;

  /** Blocks until every rank has made its own (the broadcast from rank 0), as PyTorch's does. */
  constructor(readonly module: EarlyExitModel, options: DistributedDataParallelOptions = {}) {
    this.processGroup = options.processGroup ?? defaultProcessGroup('DistributedDataParallel');
    this.broadcastBuffers = options.broadcastBuffers ?? true;
    const capMb = options.bucketCapMb ?? 25;
    if (!(capMb > 0)) throw new Error(`DistributedDataParallel: bucketCapMb must be positive, not ${capMb}`);
    this.params = module.namedParameters().filter(([, param]) => param.requiresGrad);
    if (this.params.length === 0) throw new Error('DistributedDataParallel: the model has no parameter that requires grad');
    this.buffers = module.buffers();
    binding.broadcastCoalesced(this.processGroup.handle, [...module.parameters(), ...this.buffers].map((t) => t.native), 0);
    this.reducer = binding.createGradientReducer(this.processGroup.handle, this.params.map(([, param]) => param.native),
      Math.round(capMb * 1024 * 1024), FIRST_BUCKET_BYTES);
  }

  get rank(): number { return this.processGroup.rank; }
  get worldSize(): number { return this.processGroup.worldSize; }

  /**
   * The module's forward (every exit, then the final output). With gradients on, buffers come
   * from rank 0 first and the next backward averages the gradients across the ranks: every
   * rank must call it as often as the others.
   */
  forward(input: Tensor): Tensor[] {
    const reducer = this.live('forward');
    if (isGradEnabled()) {
      if (this.broadcastBuffers && this.buffers.length > 0) {
        binding.broadcastCoalesced(this.processGroup.handle, this.buffers.map((t) => t.native), 0);
      }
      binding.reducerPrepare(reducer);
    }
    return this.module.forward(input);
  }

  /** The parameters' names, bucket by bucket, in the order their all-reduces start. */
  buckets(): string[][] {
    return binding.reducerBuckets(this.live('buckets')).map((bucket) => bucket.map((i) => this.params[i][0]));
  }

  parameters(): Tensor[] { return this.module.parameters(); }
  train(mode = true): this { this.module.train(mode); return this; }
  eval(): this { return this.train(false); }
  zeroGrad(): void { this.module.zeroGrad(); }

  /**
   * Writes the checkpoint on rank 0 only, then waits for every rank (so that all can load it
   * once this resolves), as PyTorch's recipes do.
   */
  async saveCheckpoint(dir: string, options: SaveCheckpointOptions = {}): Promise<void> {
    if (this.rank === 0) saveCheckpoint(dir, this.module, options);
    await barrier(this.processGroup);
  }

  /** Takes the gradient hooks off the parameters; the module trains alone again. */
  dispose(): void {
    if (this.reducer === undefined) return;
    binding.reducerRemove(this.reducer);
    this.reducer = undefined;
  }

  private live(what: string): unknown {
    if (this.reducer === undefined) throw new Error(`DistributedDataParallel.${what}: it was disposed`);
    return this.reducer;
  }
}
