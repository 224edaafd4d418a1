/**
 * Choosing exit thresholds on held-out data: the cheapest thresholds whose accuracy
 * stays within a target drop of the final output, with the whole trade-off curve.
 */
import { optimizeForInference } from '../torch/jit';
import { Tensor } from '../torch/tensor';
import { cat, noGrad, tidy } from '../torch/torch';
import { ExitCriterion, LabelFreeCriterion, exitDecisions, exitScores, exitsBelow } from './criteria';
import { Certificate, Guarantee, binomialUpperBound, certifySequence, checkGuarantee, guaranteeSequence } from './guarantee';
import { EarlyExitModel, EarlyExitPolicy } from './model';
import { LabelledData } from './trainer';

/** One set of thresholds and what it gives on the held-out data. */
export interface TradeOffPoint {
  thresholds: Array<number | null>;
  /** Top-1 accuracy (percent) of the early-exit network. */
  accuracy: number;
  /**
   * `accuracy` less the margin `confidence` asks for: what the chosen point promises on new
   * data. Equal to `accuracy` without `confidence`.
   */
  accuracyBound: number;
  /** Share of samples leaving at each exit, then at the final output. */
  exitFractions: number[];
  /** Mean cost per sample, in the unit of `exitCosts` (milliseconds when they are latencies). */
  expectedCost: number;
  /** Cost of the network without exits (`baselineCost`) over expected cost. */
  speedup: number;
}

export interface Calibration {
  criterion: ExitCriterion;
  /** The accuracy of the final output alone (percent). */
  finalAccuracy: number;
  /** The cheapest point within the allowed accuracy drop. */
  chosen: TradeOffPoint;
  /** Points no other point beats on both accuracy and cost, cheapest first. */
  curve: TradeOffPoint[];
  /**
   * True when no thresholds within the accuracy drop beat the network without exits
   * (predicted speed-up below 1): `chosen` then turns every exit off, and the network
   * without exits is the one to serve.
   */
  keepsFullNetwork: boolean;
  /** With `CalibrationOptions.guarantee`: what was certified, and the bound on the drop. */
  guarantee?: Certificate;
}

export interface CalibrationOptions {
  criterion: ExitCriterion;
  /** The cost of a sample leaving at each exit, then of the full forward through every exit (e.g. measured ms). */
  exitCosts: readonly number[];
  /**
   * The cost of the network without exits, which speed-ups are measured against (what
   * `measureBaselineLatency` measures). Default: the last of `exitCosts`, which flatters
   * early exits by the cost of the branches every full forward runs.
   */
  baselineCost?: number;
  /** Percentage points of accuracy one may lose against the final output; 0.5 by default. */
  maxAccuracyDrop?: number;
  /** Candidate thresholds per exit (quantiles of its scores); 32 by default. */
  candidates?: number;
  /**
   * Keep the accuracy drop within `maxAccuracyDrop` with this one-sided confidence (such as
   * 0.95) on data like the held-out data, not just on the held-out data itself: a point's
   * drop counts with a margin of z·sqrt(d)/n, d being the samples whose right-or-wrong
   * differs from the final output's. Thresholds chosen on few samples otherwise break
   * their budget on new data about half the time.
   */
  confidence?: number;
  /**
   * Instead of `maxAccuracyDrop` and `confidence`: thresholds certified by Learn-then-Test
   * (see guarantee.ts), so that with probability at least 1 − delta over the held-out data
   * the accuracy lost on new data is at most epsilon points. One threshold is shared by all
   * exits, taken from a sequence fixed in advance; label-free criteria but patience.
   */
  guarantee?: Guarantee;
}

/** Held-out outputs of every exit and the final one, with their labels. */
export interface HeldOutOutputs {
  outputs: Tensor[];
  labels: Tensor;
}

/** Runs the model over `data` in batches and keeps every output: the input of calibration. */
export function collectOutputs(model: EarlyExitModel, data: LabelledData, batchSize = 500): HeldOutOutputs {
  const wasTraining = model.training;
  model.eval();
  const count = data.images.shape[0];
  const parts: Tensor[][] = [];
  noGrad(() => {
    for (let start = 0; start < count; start += batchSize) {
      const size = Math.min(batchSize, count - start);
      const outputs = tidy(() => model.forward(data.images.narrow(0, start, size)).map((o) => o.detach()));
      outputs.forEach((output, i) => (parts[i] ??= []).push(output));
    }
  });
  model.train(wasTraining);
  return { outputs: parts.map((list) => cat(list, 0)), labels: data.labels };
}

function candidates(scores: number[], criterion: ExitCriterion, count: number): Array<number | null> {
  const sorted = [...scores].sort((a, b) => a - b);
  const values = new Set<number>();
  for (let i = 0; i <= count; i++) {
    const q = Math.min(sorted.length - 1, Math.floor((i / count) * (sorted.length - 1)));
    values.add(sorted[exitsBelow(criterion) ? q : sorted.length - 1 - q]);
  }
  return [null, ...values];
}

function evaluate(scores: number[][], correct: boolean[][], criterion: ExitCriterion, thresholds: Array<number | null>,
  costs: readonly number[], baseline: number, z: number): TradeOffPoint {
  const never = exitsBelow(criterion) ? -Infinity : Infinity;
  const decisions = exitDecisions(scores, criterion, thresholds.map((t) => (t === null ? never : t)));
  const counts = new Array(scores.length).fill(0);
  const final = correct[correct.length - 1];
  let hits = 0;
  let differing = 0;
  decisions.forEach((exit, j) => {
    counts[exit]++;
    if (correct[exit][j]) hits++;
    if (correct[exit][j] !== final[j]) differing++;
  });
  const n = decisions.length;
  const expectedCost = counts.reduce((sum, c, i) => sum + (c / n) * costs[i], 0);
  const accuracy = (100 * hits) / n;
  return {
    thresholds: [...thresholds], accuracy, accuracyBound: accuracy - (z * 100 * Math.sqrt(differing)) / n,
    exitFractions: counts.map((c) => c / n), expectedCost, speedup: baseline / expectedCost,
  };
}

/** The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) => (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/**
 * Chooses thresholds for `criterion` that keep accuracy within `maxAccuracyDrop` points
 * of the final output and minimise the expected cost. Two exits or fewer are searched
 * exhaustively over the candidates; more, one exit at a time until nothing improves.
 */
export function calibrateThresholds(heldOut: HeldOutOutputs, options: CalibrationOptions): Calibration {
  const { outputs, labels } = heldOut;
  const exits = outputs.length - 1;
  if (options.exitCosts.length !== outputs.length) {
    throw new Error(`exitCosts needs a cost per exit and one for the full forward: ${outputs.length} values, got ${options.exitCosts.length}`);
  }
  const criterion = options.criterion;
  const scores = exitScores(outputs, criterion, labels);
  const truth = Array.from(labels.data() as BigInt64Array, Number);
  const correct = noGrad(() => tidy(() => outputs.map((o) => Array.from(o.argmax(1).data() as BigInt64Array, (p, j) => Number(p) === truth[j]))));
  const finalAccuracy = (100 * correct[exits].filter(Boolean).length) / truth.length;
  if (options.guarantee !== undefined) return calibrateWithGuarantee(scores, correct, finalAccuracy, outputs[exits].shape[1], options);
  const floor = finalAccuracy - (options.maxAccuracyDrop ?? 0.5);
  const perExit = scores.slice(0, exits).map((s) => candidates(s, criterion, options.candidates ?? 32));
  if (options.confidence !== undefined && !(options.confidence > 0.5 && options.confidence < 1)) {
    throw new Error(`calibrateThresholds: confidence must be between 0.5 and 1 (such as 0.95), got ${options.confidence}`);
  }
  const z = options.confidence === undefined ? 0 : normalQuantile(options.confidence);
  const points: TradeOffPoint[] = [];
  const run = (thresholds: Array<number | null>) => {
    const point = evaluate(scores, correct, criterion, thresholds, options.exitCosts,
      options.baselineCost ?? options.exitCosts[options.exitCosts.length - 1], z);
    points.push(point);
    return point;
  };
  const better = (a: TradeOffPoint, b: TradeOffPoint | undefined) =>
    !b || (a.accuracyBound >= floor && (b.accuracyBound < floor || a.expectedCost < b.expectedCost)) ||
    (a.accuracyBound < floor && b.accuracyBound < floor && a.accuracyBound > b.accuracyBound);
  let best: TradeOffPoint | undefined;
  if (exits <= 2) {
    const walk = (prefix: Array<number | null>) => {
      if (prefix.length === exits) {
        const point = run(prefix);
        if (better(point, best)) best = point;
        return;
      }
      for (const t of perExit[prefix.length]) walk([...prefix, t]);
    };
    walk([]);
  } else {
    let current: Array<number | null> = new Array(exits).fill(null);
    best = run(current);
    for (let changed = true; changed;) {
      changed = false;
      for (let i = 0; i < exits; i++) {
        for (const t of perExit[i]) {
          const trial = [...current];
          trial[i] = t;
          const point = run(trial);
          if (better(point, best)) { best = point; current = trial; changed = true; }
        }
      }
    }
  }
  const curve = paretoFront(points);
  if (best!.speedup < 1) {
    // Slower than no exits at all: turn every exit off rather than serve a loss.
    return { criterion, finalAccuracy, chosen: run(new Array(exits).fill(null)), curve, keepsFullNetwork: true };
  }
  return { criterion, finalAccuracy, chosen: best!, curve, keepsFullNetwork: false };
}

function calibrateWithGuarantee(scores: number[][], correct: boolean[][], finalAccuracy: number, classes: number,
  options: CalibrationOptions): Calibration {
  const guarantee = options.guarantee!;
  checkGuarantee(guarantee);
  if (options.maxAccuracyDrop !== undefined || options.confidence !== undefined) {
    throw new Error('calibrateThresholds: give either guarantee or maxAccuracyDrop and confidence, not both: the guarantee\'s epsilon is the drop allowed');
  }
  const { criterion } = options;
  const exits = scores.length - 1;
  const samples = scores[0].length;
  const passed = certifySequence(scores, correct, criterion, guaranteeSequence(criterion, classes), guarantee);
  const baseline = options.baselineCost ?? options.exitCosts[exits];
  const at = (thresholds: Array<number | null>) => evaluate(scores, correct, criterion, thresholds, options.exitCosts, baseline, 0);
  const points = passed.map((p) => at(p.thresholds));
  const off = at(new Array(exits).fill(null));
  const curve = paretoFront([off, ...points]);
  let best = -1;
  points.forEach((point, i) => { if (best < 0 || point.expectedCost < points[best].expectedCost) best = i; });
  const certificate = { ...guarantee, certified: points.length > 0, passed: points.length, samples };
  if (best < 0 || points[best].speedup < 1) {
    return { criterion, finalAccuracy, chosen: off, curve, keepsFullNetwork: true, guarantee: { ...certificate, bound: 0 } };
  }
  const bound = 100 * binomialUpperBound(passed[best].losses, samples, guarantee.delta);
  return { criterion, finalAccuracy, chosen: points[best], curve, keepsFullNetwork: false, guarantee: { ...certificate, bound } };
}

function paretoFront(points: TradeOffPoint[]): TradeOffPoint[] {
  const sorted = [...points].sort((a, b) => a.expectedCost - b.expectedCost || b.accuracy - a.accuracy);
  const front: TradeOffPoint[] = [];
  for (const point of sorted) {
    if (front.length === 0 || point.accuracy > front[front.length - 1].accuracy) front.push(point);
  }
  return front;
}

/** The policy `forwardEarlyExit` takes, from a calibration of a label-free criterion. */
export function policyOf(calibration: Calibration): EarlyExitPolicy {
  if (calibration.criterion === 'crossEntropy') throw new Error("'crossEntropy' needs labels: calibrate a label-free criterion to deploy");
  return { criterion: calibration.criterion as LabelFreeCriterion, thresholds: calibration.chosen.thresholds };
}

/**
 * The median latency (ms) of the network without exits on `input`, the output read back:
 * the backbone alone,
 * reloaded without hooks, compiled as `model` is when it is in inference mode. Speed-ups
 * of early exits are measured against it (`CalibrationOptions.baselineCost`).
 */
export function measureBaselineLatency(model: EarlyExitModel, input: Tensor, runs = 30, warmup = 10): number {
  const plain = model.plainBackbone({ device: input.device });
  const full = model.inferenceMode ? optimizeForInference(plain) : plain;
  const samples: number[] = [];
  noGrad(() => {
    for (let round = 0; round < warmup + runs; round++) {
      const elapsed = timeCall(() => full.forward(input) as Tensor);
      if (round >= warmup) samples.push(elapsed);
    }
  });
  return middle(samples);
}

/**
 * Median latency (ms) of a forward stopped at each exit, then of the full forward, on
 * `input` (one sample for per-sample latency), the output read back as serving reads it,
 * every exit on the way deciding and going on: the costs calibration weighs.
 */
export function measureExitLatencies(model: EarlyExitModel, input: Tensor, runs = 30, warmup = 10): number[] {
  const exits = model.exitPoints.length;
  const policies: EarlyExitPolicy[] = [];
  // Exits passed on the way are asked and say no (no probability reaches 2), as served
  // exits are: a threshold of null would skip the decision, and with it part of the cost.
  for (let i = 0; i < exits; i++) {
    policies.push({ criterion: 'maxProbability', thresholds: model.exitPoints.map((_, j) => (j < i ? NEVER : j === i ? 0 : null)) });
  }
  policies.push({ criterion: 'maxProbability', thresholds: model.exitPoints.map(() => NEVER) });
  const wasTraining = model.training;
  model.eval();
  const samples: number[][] = policies.map(() => []);
  for (let round = 0; round < warmup + runs; round++) {
    policies.forEach((policy, i) => {
      let exit = -1;
      const elapsed = timeCall(() => {
        const result = model.forwardEarlyExit(input, policy);
        exit = result.exit;
        return result.output;
      });
      if (exit !== i) throw new Error(`measuring exit ${i}, the forward left at ${exit}`);
      if (round >= warmup) samples[i].push(elapsed);
    });
  }
  model.train(wasTraining);
  return samples.map(middle);
}

/** A maxProbability threshold no sample meets: the exit decides, and always goes on. */
export const NEVER = 2;

/** Milliseconds of `run` with its output read back, as serving reads it; the output is freed. */
export function timeCall(run: () => Tensor): number {
  const started = process.hrtime.bigint();
  const output = run();
  output.data();
  const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
  output.dispose();
  return elapsed;
}

/** The median (the upper one of an even count). */
export function middle(values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
}
