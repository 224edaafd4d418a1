/**
 * Distiller's early-exit validation statistics (`earlyexit_validate_loss` and
 * `earlyexit_validate_stats`): each sample takes the first exit whose cross-entropy
 * against its label is below that exit's threshold, else the final output; Distiller
 * computes every exit and reports what would have happened.
 */
import { topkCorrect } from '../torch/functional';
import { Tensor } from '../torch/tensor';
import { noGrad, tensor, tidy } from '../torch/torch';
import { exitDecisions, exitScores } from './criteria';

export interface EarlyExitReport {
  /** Samples that took each output (exits, then final). */
  exitTaken: number[];
  /** Percent of samples that took each output. */
  percentTaken: number[];
  /** Top-1 / top-5 accuracy (percent) of each output on the samples that took it; 0 where none did. */
  top1: number[];
  top5: number[];
  /** Each output's mean loss: the mean of per-batch mean losses over all samples; 0 where none exited. */
  lossMeans: number[];
  /** Accuracy of the whole early-exit network: per-output accuracy weighted by the share taken. */
  totalTop1: number;
  totalTop5: number;
  samples: number;
}

export class EarlyExitStats {
  private exitTaken: number[] = [];
  private correct1: number[] = [];
  private correct5: number[] = [];
  private lossSums: number[] = [];
  private batches = 0;
  private topK = 5;
  /** The exit (or final) index each sample took, in the order added. */
  readonly decisions: number[] = [];

  /** `thresholds`: one cross-entropy threshold per exit (not for the final output). */
  constructor(readonly thresholds: readonly number[]) {}

  /** Adds a batch: `outputs = [...exits, final]` and the labels. Returns the batch's decisions. */
  add(outputs: readonly Tensor[], target: Tensor): number[] {
    return noGrad(() => tidy(() => {
      const count = outputs.length;
      const scores = exitScores(outputs, 'crossEntropy', target);
      const decisions = exitDecisions(scores, 'crossEntropy', this.thresholds);
      this.topK = Math.min(5, outputs[0].shape[1]);
      for (let i = 0; i < count; i++) {
        this.exitTaken[i] ??= 0;
        this.correct1[i] ??= 0;
        this.correct5[i] ??= 0;
        this.lossSums[i] = (this.lossSums[i] ?? 0) + scores[i].reduce((a, b) => a + b, 0) / scores[i].length;
        const taking = decisions.map((d, j) => (d === i ? j : -1)).filter((j) => j >= 0);
        if (taking.length === 0) continue;
        this.exitTaken[i] += taking.length;
        const index = tensor(new BigInt64Array(taking.map(BigInt)));
        const [c1, c5] = topkCorrect(outputs[i].indexSelect(0, index), target.indexSelect(0, index), [1, this.topK]);
        this.correct1[i] += c1;
        this.correct5[i] += c5;
      }
      this.batches += 1;
      this.decisions.push(...decisions);
      return decisions;
    }));
  }

  /** The statistics Distiller logs, as numbers. */
  report(): EarlyExitReport {
    const total = this.exitTaken.reduce((a, b) => a + b, 0);
    if (total === 0) throw new Error('EarlyExitStats: no samples were added');
    const top1 = this.exitTaken.map((n, i) => (n ? (this.correct1[i] / n) * 100 : 0));
    const top5 = this.exitTaken.map((n, i) => (n ? (this.correct5[i] / n) * 100 : 0));
    const lossMeans = this.exitTaken.map((n, i) => (n ? this.lossSums[i] / this.batches : 0));
    const share = this.exitTaken.map((n) => n / total);
    return {
      exitTaken: [...this.exitTaken],
      percentTaken: this.exitTaken.map((n) => (n * 100) / total),
      top1, top5, lossMeans,
      totalTop1: top1.reduce((sum, t, i) => sum + t * share[i], 0),
      totalTop5: top5.reduce((sum, t, i) => sum + t * share[i], 0),
      samples: total,
    };
  }
}
