/**
 * When a sample may leave at an exit. Label-free criteria a deployed model can use —
 * softmax entropy (BranchyNet), top probability, top-two margin, patience (PABEE) — and
 * Distiller's cross-entropy against the label, for validation.
 */
import { crossEntropyPerSample } from '../torch/functional';
import { Tensor } from '../torch/tensor';
import { noGrad, tidy } from '../torch/torch';

/** A criterion a deployed model can evaluate without labels; the addon evaluates the same ones. */
export type LabelFreeCriterion = 'entropy' | 'maxProbability' | 'margin' | 'patience';

/** Every criterion; 'crossEntropy' needs the labels (Distiller's validation). */
export type ExitCriterion = LabelFreeCriterion | 'crossEntropy';

/** Whether a criterion exits on low scores (entropy, loss) rather than high ones. */
export function exitsBelow(criterion: ExitCriterion): boolean {
  return criterion === 'entropy' || criterion === 'crossEntropy';
}

/** Whether `score` lets a sample exit at `threshold`, with the comparisons the addon uses. */
export function meets(criterion: ExitCriterion, score: number, threshold: number): boolean {
  if (criterion === 'crossEntropy') return score < threshold; // Distiller's strict comparison
  return exitsBelow(criterion) ? score <= threshold : score >= threshold;
}

/**
 * The score of every sample at every exit ([exit][sample]), computed with the same
 * tensor operations as the addon's stop rules. For patience the score at exit i is how
 * many consecutive outputs up to i agree on the prediction.
 */
export function exitScores(outputs: readonly Tensor[], criterion: ExitCriterion, labels?: Tensor): number[][] {
  return noGrad(() => tidy(() => {
    if (criterion === 'crossEntropy') {
      if (!labels) throw new Error("the 'crossEntropy' criterion needs the labels");
      return outputs.map((output) => Array.from(crossEntropyPerSample(output, labels).float().data() as Float32Array));
    }
    if (criterion === 'patience') {
      const predictions = outputs.map((output) => Array.from(output.argmax(1).data() as BigInt64Array, Number));
      const streaks: number[][] = [];
      predictions.forEach((prediction, i) => {
        streaks.push(prediction.map((p, j) => (i > 0 && predictions[i - 1][j] === p ? streaks[i - 1][j] + 1 : 1)));
      });
      return streaks;
    }
    return outputs.map((output) => {
      const logits = output.float();
      let score: Tensor;
      if (criterion === 'entropy') {
        const logP = logits.logSoftmax(1);
        score = logP.exp().mul(logP).sum(1).neg();
      } else if (criterion === 'maxProbability') {
        score = logits.softmax(1).max(1).values;
      } else if (criterion === 'margin') {
        const top = logits.softmax(1).topk(2, 1).values;
        score = top.select(1, 0).sub(top.select(1, 1));
      } else {
        throw new Error(`unknown exit criterion '${criterion as string}' (expected entropy, maxProbability, margin, patience or crossEntropy)`);
      }
      return Array.from(score.data() as Float32Array);
    });
  }));
}

/**
 * For each sample, the first exit whose score meets its threshold, else the final
 * output (index = number of thresholds). `scores` come from `exitScores` over
 * `[...exits, final]`; one threshold per exit.
 */
export function exitDecisions(scores: readonly number[][], criterion: ExitCriterion, thresholds: readonly number[]): number[] {
  const exits = scores.length - 1;
  if (thresholds.length !== exits) {
    throw new Error(`one threshold per exit: ${exits} exit(s), ${thresholds.length} threshold(s)`);
  }
  const samples = scores[0]?.length ?? 0;
  const decisions: number[] = [];
  for (let j = 0; j < samples; j++) {
    let taken = exits;
    for (let i = 0; i < exits; i++) {
      if (meets(criterion, scores[i][j], thresholds[i])) { taken = i; break; }
    }
    decisions.push(taken);
  }
  return decisions;
}
