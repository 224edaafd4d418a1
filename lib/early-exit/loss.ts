/**
 * Distiller's early-exit training loss, and what later work added to it: distillation of
 * each exit from the final output (FastBERT, BERxiT) and loss weights on a schedule.
 */
import { crossEntropy, klDiv } from '../torch/functional';
import { Tensor } from '../torch/tensor';

export interface EarlyExitLossOptions {
  /** The loss of one output against the target; cross-entropy by default, as Distiller. */
  criterion?: (output: Tensor, target: Tensor) => Tensor;
  /**
   * Each exit also learns the final output softened by `temperature`:
   * `(1 - alpha) * criterion(exit, y) + alpha * T^2 * KL(softmax(final / T) || softmax(exit / T))`,
   * with the final output detached so the teacher is not pulled toward its students.
   */
  distillation?: { temperature: number; alpha: number };
}

/** Checks Distiller's rule: one weight per exit, each non-negative, summing below 1. */
export function checkLossWeights(lossWeights: readonly number[], exits: number): void {
  if (lossWeights.length !== exits) {
    throw new Error(`earlyExitLoss needs one loss weight per exit: ${exits} exit(s), ${lossWeights.length} weight(s)`);
  }
  if (lossWeights.some((w) => !(w >= 0))) throw new Error(`loss weights must be non-negative, got [${lossWeights}]`);
  const sum = lossWeights.reduce((a, b) => a + b, 0);
  if (!(sum < 1)) {
    throw new Error(`the exits' loss weights must sum to less than 1 (the final exit gets 1 - sum), got ${sum} from [${lossWeights}]`);
  }
}

/**
 * `sum_i w_i * CE(exit_i, y) + (1 - sum_i w_i) * CE(final, y)` for `outputs =
 * [...exits, final]`, as Distiller's `earlyexit_loss`; an exit whose output is null (not
 * reached) is skipped, its weight still counted in the sum.
 */
export function earlyExitLoss(outputs: ReadonlyArray<Tensor | null>, target: Tensor, lossWeights: readonly number[],
  options: EarlyExitLossOptions = {}): Tensor {
  if (outputs.length < 1 || outputs[outputs.length - 1] === null) throw new Error('earlyExitLoss needs the final output last');
  const exits = outputs.length - 1;
  checkLossWeights(lossWeights, exits);
  const criterion = options.criterion ?? ((output: Tensor, y: Tensor) => crossEntropy(output, y));
  const final = outputs[exits] as Tensor;
  const sum = lossWeights.reduce((a, b) => a + b, 0);
  let loss = criterion(final, target).mul(1 - sum);
  const teacher = options.distillation && final.detach().div(options.distillation.temperature).softmax(1);
  for (let i = 0; i < exits; i++) {
    const output = outputs[i];
    if (output === null) continue;
    let exitLoss = criterion(output, target);
    if (options.distillation && teacher) {
      const { temperature, alpha } = options.distillation;
      const student = output.div(temperature).logSoftmax(1);
      const soft = klDiv(student, teacher, { reduction: 'batchmean' }).mul(temperature * temperature);
      exitLoss = exitLoss.mul(1 - alpha).add(soft, alpha);
    }
    loss = loss.add(exitLoss, lossWeights[i]);
  }
  return loss;
}

/**
 * Loss weights that change over training: piecewise-linear between `[step, weights]`
 * points, constant before the first and after the last.
 */
export function lossWeightSchedule(points: ReadonlyArray<readonly [number, readonly number[]]>): (step: number) => number[] {
  if (points.length === 0) throw new Error('lossWeightSchedule needs at least one [step, weights] point');
  const sorted = [...points].sort((a, b) => a[0] - b[0]);
  const width = sorted[0][1].length;
  for (const [, weights] of sorted) checkLossWeights(weights, width);
  return (step: number): number[] => {
    if (step <= sorted[0][0]) return [...sorted[0][1]];
    for (let i = 1; i < sorted.length; i++) {
      const [s1, w1] = sorted[i];
      if (step <= s1) {
        const [s0, w0] = sorted[i - 1];
        const t = (step - s0) / (s1 - s0);
        return w0.map((w, j) => w + t * (w1[j] - w));
      }
    }
    return [...sorted[sorted.length - 1][1]];
  };
}
