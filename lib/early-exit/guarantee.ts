/**
 * Thresholds with a distribution-free guarantee: Learn-then-Test (Angelopoulos, Bates,
 * Candès, Jordan, Lei 2021), as CALM and "Fast yet Safe" use it for early exits. With
 * probability at least 1 − δ over the calibration set, the accuracy the exits lose on new
 * data from the same distribution is at most ε.
 *
 * Why not the normal margin `confidence` gives: it bounds one point's drop, but calibration
 * picks the best of hundreds of points, and the winner's luck is not in the margin. Here the
 * candidates form a fixed sequence, from the most careful thresholds to the loosest, chosen
 * before any data is seen; each is tested in turn with an exact binomial p-value and the
 * sequence stops at the first that fails, which keeps the chance of certifying any bad one
 * at δ without a multiplicity correction. Every certified point holds at once, so the
 * cheapest of them is served.
 *
 * A sample's loss is 1 where its exit's prediction is wrong and the final output's is right,
 * else 0: accuracy lost is at most that risk (samples an exit gets right and the final
 * output wrong only help), and a 0/1 loss has the binomial as its exact tail.
 */
import { ExitCriterion, exitDecisions } from './criteria';

/** "At most `epsilon` points of accuracy lost, with probability at least 1 − `delta`." */
export interface Guarantee {
  /** Percentage points of accuracy one may lose against the final output, as `maxAccuracyDrop` (0.5: half a point). */
  epsilon: number;
  /** The chance the calibration set misleads (0.05: the guarantee holds for 95% of calibration sets). */
  delta: number;
}

/** What was certified, in `Calibration.guarantee`. */
export interface Certificate extends Guarantee {
  /** False when not even the most careful thresholds passed: every exit is then off. */
  certified: boolean;
  /**
   * Points of accuracy the served thresholds lose on new data at most, with probability 1 − δ
   * (the Clopper–Pearson upper bound on their loss); at most `epsilon` when certified, 0
   * when every exit is off.
   */
  bound: number;
  /** How many thresholds of the sequence passed before the first failed (or the sequence ended). */
  passed: number;
  /** Samples of the calibration set. */
  samples: number;
}

/** P(X ≤ k) for X ~ Binomial(n, p), summed term by term in logs (exact to rounding). */
export function binomialCdf(k: number, n: number, p: number): number {
  if (k < 0) return 0;
  if (k >= n || p <= 0) return 1;
  if (p >= 1) return 0;
  const logP = Math.log(p);
  const logQ = Math.log1p(-p);
  let logTerm = n * logQ; // k = 0
  let sum = Math.exp(logTerm);
  for (let i = 0; i < k; i++) {
    logTerm += Math.log((n - i) / (i + 1)) + logP - logQ;
    sum += Math.exp(logTerm);
  }
  return Math.min(1, sum);
}

/** The Clopper–Pearson upper bound: the p at which seeing at most `k` of `n` has chance `delta`. */
export function binomialUpperBound(k: number, n: number, delta: number): number {
  if (k >= n) return 1;
  let low = k / n;
  let high = 1;
  for (let i = 0; i < 100; i++) {
    const middle = (low + high) / 2;
    if (binomialCdf(k, n, middle) > delta) low = middle;
    else high = middle;
  }
  return high;
}

/**
 * The fixed sequence, from the most careful threshold to the loosest, one threshold shared by
 * every exit, made from the criterion and the number of classes alone (never from the data):
 * entropy λ·ln(classes), top probability 1 − λ(1 − 1/classes), margin 1 − λ, for λ from 10⁻⁴
 * to 1 in equal ratios.
 */
export function guaranteeSequence(criterion: ExitCriterion, classes: number, steps = 128): number[] {
  const lambdas = Array.from({ length: steps }, (_, i) => 10 ** (-4 + (4 * i) / (steps - 1)));
  if (criterion === 'entropy') return lambdas.map((l) => l * Math.log(classes));
  if (criterion === 'maxProbability') return lambdas.map((l) => 1 - l * (1 - 1 / classes));
  if (criterion === 'margin') return lambdas.map((l) => 1 - l);
  throw new Error(`calibrateThresholds: a guarantee needs a criterion whose thresholds can be ordered before the data is seen ` +
    `(entropy, maxProbability or margin), not '${criterion}'`);
}

/** Checks a guarantee's numbers, naming what is wrong. */
export function checkGuarantee(guarantee: Guarantee): void {
  const { epsilon, delta } = guarantee ?? {} as Guarantee;
  if (!(typeof epsilon === 'number' && epsilon > 0 && epsilon < 100)) {
    throw new Error(`calibrateThresholds: guarantee.epsilon is the accuracy drop allowed in percentage points, above 0 and below 100 (such as 0.5), got ${epsilon}`);
  }
  if (!(typeof delta === 'number' && delta > 0 && delta < 1)) {
    throw new Error(`calibrateThresholds: guarantee.delta is the chance the guarantee fails, above 0 and below 1 (such as 0.05), got ${delta}`);
  }
}

/**
 * Tests the sequence on calibration data: `scores` and `correct` per exit and final
 * ([output][sample]). Returns the thresholds of every point that passed (shared by all
 * exits) with its loss count, and the certificate's counts.
 */
export function certifySequence(scores: readonly number[][], correct: readonly boolean[][], criterion: ExitCriterion,
  sequence: readonly number[], guarantee: Guarantee): Array<{ thresholds: number[]; losses: number }> {
  const exits = scores.length - 1;
  const n = scores[0].length;
  const final = correct[exits];
  const passed: Array<{ thresholds: number[]; losses: number }> = [];
  for (const threshold of sequence) {
    const thresholds = new Array(exits).fill(threshold);
    const decisions = exitDecisions(scores, criterion, thresholds);
    let losses = 0;
    decisions.forEach((exit, j) => { if (!correct[exit][j] && final[j]) losses++; });
    if (binomialCdf(losses, n, guarantee.epsilon / 100) > guarantee.delta) break;
    passed.push({ thresholds, losses });
  }
  return passed;
}
