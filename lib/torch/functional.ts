/**
 * `nn.functional`: losses and the accuracy counts early-exit training reports, each a
 * call of the ATen operator PyTorch's function calls.
 */
import { Tensor, callOp } from './tensor';

/** How a loss reduces over the batch. */
export type Reduction = 'none' | 'mean' | 'sum';

const REDUCTION: Record<Reduction, number> = { none: 0, mean: 1, sum: 2 };

function reduction(value: Reduction | undefined): number {
  const code = REDUCTION[value ?? 'mean'];
  if (code === undefined) throw new TypeError(`reduction must be 'none', 'mean' or 'sum', got '${value}'`);
  return code;
}

export interface CrossEntropyOptions {
  /** A weight per class. */
  weight?: Tensor;
  /** A target value that contributes nothing (PyTorch's -100). */
  ignoreIndex?: number;
  reduction?: Reduction;
  /** Mixes the one-hot target with the uniform distribution, as in PyTorch. */
  labelSmoothing?: number;
}

/** Cross-entropy between logits `[N, C]` and class indices `[N]` (PyTorch's `F.cross_entropy`). */
export function crossEntropy(input: Tensor, target: Tensor, options: CrossEntropyOptions = {}): Tensor {
  const smoothing = options.labelSmoothing ?? 0;
  if (smoothing < 0 || smoothing > 1) throw new RangeError(`labelSmoothing must be in [0, 1], got ${smoothing}`);
  return callOp('cross_entropy_loss', '', [input, target, options.weight ?? null, reduction(options.reduction),
    options.ignoreIndex ?? -100, smoothing]) as Tensor;
}

/** Negative log-likelihood of log-probabilities `[N, C]` for class indices `[N]`. */
export function nllLoss(input: Tensor, target: Tensor, options: Omit<CrossEntropyOptions, 'labelSmoothing'> = {}): Tensor {
  return callOp('nll_loss_nd', '', [input, target, options.weight ?? null, reduction(options.reduction),
    options.ignoreIndex ?? -100]) as Tensor;
}

/** Mean squared error. */
export function mseLoss(input: Tensor, target: Tensor, options: { reduction?: Reduction } = {}): Tensor {
  return callOp('mse_loss', '', [input, target, reduction(options.reduction)]) as Tensor;
}

/**
 * Kullback-Leibler divergence of `target` from the log-probabilities `input`
 * (PyTorch's `F.kl_div`); 'batchmean' divides the sum by the batch size.
 */
export function klDiv(input: Tensor, target: Tensor, options: { reduction?: Reduction | 'batchmean'; logTarget?: boolean } = {}): Tensor {
  const logTarget = options.logTarget ?? false;
  if (options.reduction === 'batchmean') {
    const sum = callOp('kl_div', '', [input, target, REDUCTION.sum, logTarget]) as Tensor;
    return sum.div(input.shape[0]);
  }
  return callOp('kl_div', '', [input, target, reduction(options.reduction), logTarget]) as Tensor;
}

/** Per-sample cross-entropy, as Distiller's validation computes it for every exit. */
export function crossEntropyPerSample(input: Tensor, target: Tensor): Tensor {
  return crossEntropy(input, target, { reduction: 'none' });
}

/**
 * How many samples have their target among the top `k` outputs, for each `k`
 * (the counts behind top-1/top-5 accuracy).
 */
export function topkCorrect(output: Tensor, target: Tensor, ks: number[] = [1]): number[] {
  const maxK = Math.min(Math.max(...ks), output.shape[1]);
  const { indices } = output.topk(maxK, 1, true, true);
  const hits = indices.eq(target.reshape(-1, 1));
  return ks.map((k) => hits.narrow(1, 0, Math.min(k, maxK)).sum().item() as number);
}

/** Top-k accuracy in percent, for each `k`. */
export function accuracy(output: Tensor, target: Tensor, ks: number[] = [1]): number[] {
  const n = output.shape[0];
  return topkCorrect(output, target, ks).map((correct) => (100 * correct) / n);
}
