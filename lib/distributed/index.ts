/**
 * Data-parallel training across processes on PyTorch's c10d, as `torch.distributed`:
 * process groups and collectives, `DistributedDataParallel`, `DistributedSampler`. Start the
 * ranks with `npx torch-early-exit launch --nproc-per-node N script.js` (torchrun's variables).
 */
export {
  initProcessGroup, destroyProcessGroup, isInitialized, getRank, getWorldSize, allReduce, broadcast, allGather, barrier,
  ProcessGroup,
} from './process-group';
export type { Backend, ReduceOp, InitProcessGroupOptions } from './process-group';
export { DistributedDataParallel } from './ddp';
export type { DistributedDataParallelOptions } from './ddp';
export { DistributedSampler } from './sampler';
export type { DistributedSamplerOptions } from './sampler';
