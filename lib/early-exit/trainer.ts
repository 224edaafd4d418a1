/**
 * A training loop for early-exit models, as Distiller's image classifier trains them:
 * every exit and the final output together, with the weighted early-exit loss.
 */
import { accuracy } from '../torch/functional';
import { CosineAnnealingLR, Optimizer, SGD } from '../torch/optim';
import { DistributedDataParallel } from '../distributed/ddp';
import { DistributedSampler } from '../distributed/sampler';
import { Tensor } from '../torch/tensor';
import { manualSeed, noGrad, randperm, tensor, tidy } from '../torch/torch';
import { EarlyExitLossOptions, earlyExitLoss } from './loss';
import { EarlyExitModel } from './model';

/** Inputs with their class labels. */
export interface LabelledData {
  images: Tensor;
  labels: Tensor;
}

export interface BatchProgress {
  epoch: number;
  batch: number;
  batches: number;
  loss: number;
  /** Top-1 accuracy of this batch at each output, exits first, in percent. */
  accuracy: number[];
}

export interface TrainOptions {
  epochs: number;
  lossWeights: number[] | ((step: number) => number[]);
  batchSize?: number;
  /** SGD with momentum and a cosine schedule unless an optimizer is given. */
  optimizer?: Optimizer;
  lr?: number;
  momentum?: number;
  weightDecay?: number;
  seed?: number;
  loss?: EarlyExitLossOptions;
  onBatch?: (progress: BatchProgress) => void;
  onEpoch?: (epoch: number, validation?: number[]) => void;
  /** Held-out data to report top-1 accuracy per output after each epoch. */
  validation?: LabelledData;
  /** Checked between batches: stop early when it returns true (Ctrl-C). */
  shouldStop?: () => boolean;
}

/**
 * Trains every exit and the final output; returns the last epoch's held-out accuracy, if any.
 * Given a `DistributedDataParallel`, each rank trains on its own shard of `data`
 * (`DistributedSampler`, reshuffled each epoch from `seed`, default 0) and the gradients are
 * averaged across the ranks; `batchSize` is then per rank, as in PyTorch.
 */
export function trainEarlyExit(model: EarlyExitModel | DistributedDataParallel, data: LabelledData, options: TrainOptions): number[] | undefined {
  const steps = trainingSteps(model, data, options);
  for (let next = steps.next(); ; next = steps.next()) if (next.done) return next.value;
}

/**
 * `trainEarlyExit` that gives the event loop a turn after every batch, so timers, I/O
 * and signal handlers (Ctrl-C through `shouldStop`) run while it trains.
 */
export async function trainEarlyExitAsync(model: EarlyExitModel | DistributedDataParallel, data: LabelledData, options: TrainOptions): Promise<number[] | undefined> {
  const steps = trainingSteps(model, data, options);
  for (let next = steps.next(); ; next = steps.next()) {
    if (next.done) return next.value;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The training loop, pausing after each batch. */
function* trainingSteps(wrapped: EarlyExitModel | DistributedDataParallel, data: LabelledData, options: TrainOptions): Generator<void, number[] | undefined> {
  const ddp = wrapped instanceof DistributedDataParallel ? wrapped : undefined;
  const model = ddp ? ddp.module : wrapped as EarlyExitModel;
  const batchSize = options.batchSize ?? 64;
  const count = data.images.shape[0];
  const sampler = ddp && new DistributedSampler(count, { numReplicas: ddp.worldSize, rank: ddp.rank, seed: options.seed ?? 0 });
  const shard = sampler ? sampler.numSamples : count;
  const batches = Math.floor(shard / batchSize);
  if (batches < 1) throw new Error(`trainEarlyExit: ${shard} samples${sampler ? ` (rank ${ddp!.rank}'s shard)` : ''} do not fill one batch of ${batchSize}`);
  if (options.seed !== undefined) manualSeed(options.seed);
  const optimizer = options.optimizer ?? new SGD(model.parameters().filter((p) => p.requiresGrad),
    { lr: options.lr ?? 0.05, momentum: options.momentum ?? 0.9, weightDecay: options.weightDecay ?? 5e-4 });
  const scheduler = options.optimizer ? undefined : new CosineAnnealingLR(optimizer, options.epochs);
  const weightsAt = typeof options.lossWeights === 'function' ? options.lossWeights : () => options.lossWeights as number[];
  let validation: number[] | undefined;
  let step = 0;
  for (let epoch = 0; epoch < options.epochs; epoch++) {
    model.train();
    sampler?.setEpoch(epoch);
    const order = sampler ? tensor(sampler.indices(), { dtype: 'int64' }) : randperm(count);
    for (let batch = 0; batch < batches; batch++) {
      if (options.shouldStop?.()) {
        order.dispose();
        return validation;
      }
      tidy(() => {
        const index = order.narrow(0, batch * batchSize, batchSize);
        const x = data.images.indexSelect(0, index);
        const y = data.labels.indexSelect(0, index);
        const outputs = ddp ? ddp.forward(x) : model.forward(x);
        const loss = earlyExitLoss(outputs, y, weightsAt(step), options.loss);
        optimizer.zeroGrad();
        loss.backward();
        optimizer.step();
        options.onBatch?.({
          epoch, batch, batches, loss: loss.item() as number,
          accuracy: noGrad(() => outputs.map((output) => accuracy(output.detach(), y)[0])),
        });
      });
      step++;
      yield;
    }
    order.dispose();
    scheduler?.step();
    if (options.validation) validation = evaluateAccuracy(model, options.validation, 500);
    options.onEpoch?.(epoch, validation);
  }
  model.eval();
  return validation;
}

/** Top-1 accuracy (percent) at each output, exits first, in eval mode and without gradients. */
export function evaluateAccuracy(model: EarlyExitModel, data: LabelledData, batchSize = 500): number[] {
  const wasTraining = model.training;
  model.eval();
  const count = data.images.shape[0];
  const correct: number[] = [];
  noGrad(() => {
    for (let start = 0; start < count; start += batchSize) {
      tidy(() => {
        const size = Math.min(batchSize, count - start);
        const outputs = model.forward(data.images.narrow(0, start, size));
        const y = data.labels.narrow(0, start, size);
        outputs.forEach((output, i) => { correct[i] = (correct[i] ?? 0) + (output.argmax(1).eq(y).sum().item() as number); });
      });
    }
  });
  model.train(wasTraining);
  return correct.map((c) => (100 * c) / count);
}
