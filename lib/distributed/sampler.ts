/**
 * PyTorch's `DistributedSampler`: each rank a disjoint shard of the dataset's indices,
 * reshuffled each epoch from `seed + epoch` (the same permutation as PyTorch's, from
 * LibTorch's own generator), padded by repeating the first indices so that every rank gets
 * as many, or cut with `dropLast`.
 */
import { binding } from '../binding';
import { Tensor } from '../torch/tensor';

export interface DistributedSamplerOptions {
  /** The number of ranks (the group's world size). */
  numReplicas: number;
  /** This rank. */
  rank: number;
  /** Default true. */
  shuffle?: boolean;
  /** Default 0; every rank must use the same. */
  seed?: number;
  /** Drop the tail that does not divide evenly, instead of padding (default false). */
  dropLast?: boolean;
}

export class DistributedSampler {
  readonly numReplicas: number;
  readonly rank: number;
  readonly shuffle: boolean;
  readonly seed: number;
  readonly dropLast: boolean;
  /** The indices each rank gets per epoch. */
  readonly numSamples: number;
  private epoch = 0;

  constructor(readonly datasetSize: number, options: DistributedSamplerOptions) {
    const { numReplicas, rank } = options;
    if (!Number.isInteger(numReplicas) || numReplicas < 1) throw new Error(`DistributedSampler: numReplicas must be a positive whole number, not ${numReplicas}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= numReplicas) throw new Error(`DistributedSampler: invalid rank ${rank}, rank should be in the interval [0, ${numReplicas - 1}]`);
    if (!Number.isInteger(datasetSize) || datasetSize < 1) throw new Error(`DistributedSampler: the dataset size must be a positive whole number, not ${datasetSize}`);
    this.numReplicas = numReplicas;
    this.rank = rank;
    this.shuffle = options.shuffle ?? true;
    this.seed = options.seed ?? 0;
    this.dropLast = options.dropLast ?? false;
    this.numSamples = this.dropLast && datasetSize % numReplicas !== 0
      ? Math.ceil((datasetSize - numReplicas) / numReplicas)
      : Math.ceil(datasetSize / numReplicas);
  }

  /** Sets the epoch, so that each epoch's shuffle differs (call it before each epoch, as in PyTorch). */
  setEpoch(epoch: number): void {
    this.epoch = epoch;
  }

  /** This rank's indices for the current epoch. */
  indices(): number[] {
    let all: number[];
    if (this.shuffle) {
      const order = new Tensor(binding.randpermWithSeed(this.datasetSize, this.seed + this.epoch));
      all = Array.from(order.data() as BigInt64Array, Number);
      order.dispose();
    } else {
      all = Array.from({ length: this.datasetSize }, (_, i) => i);
    }
    const total = this.numSamples * this.numReplicas;
    if (this.dropLast) {
      all = all.slice(0, total);
    } else {
      for (let i = 0; all.length < total; i++) all.push(all[i]);
    }
    const mine: number[] = [];
    for (let i = this.rank; i < total; i += this.numReplicas) mine.push(all[i]);
    return mine;
  }
}
