/**
 * Choosing exit thresholds on held-out data: the cheapest thresholds whose accuracy
 * stays within a target drop of the final output, with the whole trade-off curve.
 */
import { optimizeForInference } from '../jit';
import { Tensor } from '../tensor';
import { cat, noGrad, tidy } from '../torch';
import { ExitCriterion, LabelFreeCriterion, exitDecisions, exitScores, exitsBelow } from './criteria';
import { EarlyExitModel, EarlyExitPolicy } from './model';
import { LabelledData } from './trainer';

/** One set of thresholds and what it gives on the held-out data. */
export interface TradeOffPoint {
  thresholds: Array<number | null>;
  /** Top-1 accuracy (percent) of the early-exit network. */
  accuracy: number;
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
  costs: readonly number[], baseline: number): TradeOffPoint {
  const never = exitsBelow(criterion) ? -Infinity : Infinity;
  const decisions = exitDecisions(scores, criterion, thresholds.map((t) => (t === null ? never : t)));
  const counts = new Array(scores.length).fill(0);
  let hits = 0;
  decisions.forEach((exit, j) => { counts[exit]++; if (correct[exit][j]) hits++; });
  const n = decisions.length;
  const expectedCost = counts.reduce((sum, c, i) => sum + (c / n) * costs[i], 0);
  return {
    thresholds: [...thresholds], accuracy: (100 * hits) / n, exitFractions: counts.map((c) => c / n),
    expectedCost, speedup: baseline / expectedCost,
  };
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
  const floor = finalAccuracy - (options.maxAccuracyDrop ?? 0.5);
  const perExit = scores.slice(0, exits).map((s) => candidates(s, criterion, options.candidates ?? 32));
  const points: TradeOffPoint[] = [];
  const run = (thresholds: Array<number | null>) => {
    const point = evaluate(scores, correct, criterion, thresholds, options.exitCosts,
      options.baselineCost ?? options.exitCosts[options.exitCosts.length - 1]);
    points.push(point);
    return point;
  };
  const better = (a: TradeOffPoint, b: TradeOffPoint | undefined) =>
    !b || (a.accuracy >= floor && (b.accuracy < floor || a.expectedCost < b.expectedCost)) ||
    (a.accuracy < floor && b.accuracy < floor && a.accuracy > b.accuracy);
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
 * The median latency (ms) of the network without exits on `input`: the backbone alone,
 * reloaded without hooks, compiled as `model` is when it is in inference mode. Speed-ups
 * of early exits are measured against it (`CalibrationOptions.baselineCost`).
 */
export function measureBaselineLatency(model: EarlyExitModel, input: Tensor, runs = 30, warmup = 10): number {
  const plain = model.plainBackbone({ device: input.device });
  const full = model.inferenceMode ? optimizeForInference(plain) : plain;
  const samples: number[] = [];
  noGrad(() => {
    for (let round = 0; round < warmup + runs; round++) {
      const started = process.hrtime.bigint();
      const output = full.forward(input) as Tensor;
      const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
      output.dispose();
      if (round >= warmup) samples.push(elapsed);
    }
  });
  return [...samples].sort((a, b) => a - b)[Math.floor(samples.length / 2)];
}

/**
 * Median latency (ms) of a forward stopped at each exit, then of the full forward, on
 * `input` (one sample for per-sample latency): the costs calibration weighs.
 */
export function measureExitLatencies(model: EarlyExitModel, input: Tensor, runs = 30, warmup = 10): number[] {
  const exits = model.exitPoints.length;
  const policies: EarlyExitPolicy[] = [];
  for (let i = 0; i < exits; i++) {
    policies.push({ criterion: 'maxProbability', thresholds: model.exitPoints.map((_, j) => (j === i ? 0 : null)) });
  }
  policies.push({ criterion: 'maxProbability', thresholds: model.exitPoints.map(() => null) });
  const wasTraining = model.training;
  model.eval();
  const samples: number[][] = policies.map(() => []);
  for (let round = 0; round < warmup + runs; round++) {
    policies.forEach((policy, i) => {
      const started = process.hrtime.bigint();
      const result = model.forwardEarlyExit(input, policy);
      const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
      result.output.dispose();
      if (result.exit !== i) throw new Error(`measuring exit ${i}, the forward left at ${result.exit}`);
      if (round >= warmup) samples[i].push(elapsed);
    });
  }
  model.train(wasTraining);
  return samples.map((list) => {
    const sorted = [...list].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  });
}
