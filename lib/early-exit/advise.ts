/**
 * Where to put exits: Apparate's recipe (Dai et al., SOSP'24, arXiv 2312.05385) for a
 * model a user already has. Every module output that can feed a branch is a candidate; a
 * cheap ramp (pool + linear, as the seed's branch) is trained at every candidate at once on
 * the frozen backbone; each candidate is timed as a served model would run it (compiled,
 * stopped there, and passed through); then a set of exits is chosen on held-out data that
 * minimises the expected latency per sample at the accuracy budget, every ramp's own cost
 * counted for the samples that pass it.
 *
 * Why this search: Apparate adds ramps and prunes them with thresholds tuned as it goes.
 * Here the same is done with an explicit cost model (leaving at exit k costs the stop there
 * plus the ramps before it; passing every exit costs the network plus every ramp), so each
 * step compares sets by the latency calibration predicts for them, under the same budget
 * (Learn-then-Test's guarantee by default) that the served thresholds will be held to:
 * greedy addition of the exit that lowers the expected latency most, until none lowers it
 * by `minGain` of the network's latency or `maxExits` is reached, then removal of any exit
 * that no longer saves that much. Exhaustive search
 * over every subset would be exact but grows as 2^candidates (20 candidates: a million
 * calibrations); the test checks the greedy answer against it on a small set.
 */
import { RemovableHandle, ScriptModule, optimizeForInference } from '../torch/jit';
import { parseBranchSpec } from '../torch/branch-spec';
import { Adam } from '../torch/optim';
import { Tensor } from '../torch/tensor';
import { noGrad, tidy } from '../torch/torch';
import { Calibration, HeldOutOutputs, NEVER, calibrateThresholds, collectOutputs, middle, timeCall } from './calibrate';
import { ExitsDef } from './exit-mgr';
import { Guarantee } from './guarantee';
import { EarlyExitModel } from './model';
import { BatchProgress, LabelledData, trainEarlyExitAsync } from './trainer';

/** A module whose output can feed an exit, with that output's shape for one sample. */
export interface CandidatePoint {
  point: string;
  shape: number[];
}

/** The criteria advise tunes thresholds for (patience needs thresholds a guarantee cannot order). */
export type AdviseCriterion = 'entropy' | 'maxProbability' | 'margin';

/**
 * Candidates by default: the modules `depth` names deep or less (ResNet's blocks
 * `layer1.0`…, MobileNetV2's `features.0`…, a stem's layers), that the forward calls
 * once, whose output is one float tensor of 2 to 4 dimensions holding the batch in its
 * first. Modules giving the same output as the next one out (a block and its last layer,
 * a stage and its last block) count once, under the shorter name, and the model's own
 * output is not a candidate. Found by one forward of `sample` (two samples or more, so
 * that the batch dimension shows) with a hook on every module, in eval mode.
 */
export function candidatePoints(backbone: ScriptModule, sample: Tensor, options: { depth?: number } = {}): CandidatePoint[] {
  const depth = options.depth ?? 2;
  const batch = sample.shape[0];
  if (batch < 2) throw new Error(`candidatePoints: the sample needs two rows or more, so that the batch dimension shows; got ${batch}`);
  const seen: Array<{ point: string; output: Tensor }> = [];
  const handles: RemovableHandle[] = [];
  for (const [name, module] of backbone.namedModules()) {
    if (name === '' || name.split('.').length > depth || module.callsPerForward !== 1) continue;
    try {
      handles.push(module.registerForwardHook((_m, _inputs, output) => {
        if (output instanceof Tensor) seen.push({ point: name, output: output.detach().clone() });
      }));
    } catch {
      // A module an exported program cannot hook (its output has no single name) is no candidate.
    }
  }
  const final = inEvalMode(backbone, () => {
    try {
      return noGrad(() => backbone.forward(sample) as Tensor);
    } finally {
      for (const handle of handles) handle.remove();
    }
  });
  const same = (a: Tensor, b: Tensor) => a.shape.length === b.shape.length && a.shape.every((s, d) => s === b.shape[d]) &&
    noGrad(() => tidy(() => a.sub(b).abs().max().item() as number)) === 0;
  const groups: Array<Array<{ point: string; output: Tensor }>> = [];
  for (const entry of seen) {
    const last = groups[groups.length - 1];
    if (last && same(last[last.length - 1].output, entry.output)) last.push(entry);
    else groups.push([entry]);
  }
  const candidates: CandidatePoint[] = [];
  for (const group of groups) {
    const { output } = group[0];
    const usable = (output.dtype === 'float32' || output.dtype === 'float64') && output.shape.length >= 2 &&
      output.shape.length <= 4 && output.shape[0] === batch && !same(output, final);
    if (usable) {
      const shortest = group.reduce((a, b) => (b.point.split('.').length < a.point.split('.').length ? b : a));
      candidates.push({ point: shortest.point, shape: [1, ...output.shape.slice(1)] });
    }
  }
  for (const entry of seen) entry.output.dispose();
  final.dispose();
  return candidates;
}

/**
 * The cheap ramp, in PyTorch's syntax: for an image's [N, C, H, W], average pooling to a
 * grid of at most 4 × 4 and a linear layer (the seed's branch pools 3 × 3 cells before its
 * linear layer; a grid keeps where things are, which one value per channel loses, and
 * costs a few microseconds anywhere); the first token and a linear layer for a sequence's
 * [N, T, D] (the [CLS] token, as DeeBERT's off-ramps read it); a linear layer for [N, D].
 */
export function defaultRamp(shape: readonly number[], classes: number): string {
  if (shape.length === 4) {
    const [h, w] = [Math.min(4, shape[2]), Math.min(4, shape[3])];
    return `AdaptiveAvgPool2d(${h === w ? h : `(${h}, ${w})`}), Flatten(), Linear(${shape[1] * h * w}, ${classes})`;
  }
  if (shape.length === 3) return `Select(1, 0), Linear(${shape[2]}, ${classes})`;
  if (shape.length === 2) return `Linear(${shape[1]}, ${classes})`;
  throw new Error(`defaultRamp: no ramp for an output of shape [${shape.join(', ')}]: give one with options.ramp`);
}

/** Measured costs of every candidate as the only exit of the compiled model, in ms at batch 1. */
export interface CandidateCosts {
  /** A forward stopped at the candidate: the network up to it, its ramp and the decision. */
  stopMs: number[];
  /** What the candidate adds to a forward that passes it: its ramp and its decision (to go on). */
  rampMs: number[];
  /** The network without exits, compiled the same way. */
  baselineMs: number;
}

/**
 * What a set of exits costs per sample, by where the sample leaves: leaving at the k-th of
 * `exits` (candidate indices in forward order) costs the stop there and every earlier
 * ramp; the last value is the forward through every exit to the final output.
 */
export function costsOf(exits: readonly number[], costs: CandidateCosts): number[] {
  let passed = 0;
  const leaving = exits.map((i) => {
    const cost = costs.stopMs[i] + passed;
    passed += costs.rampMs[i];
    return cost;
  });
  return [...leaving, costs.baselineMs + passed];
}

/** The accuracy budget of the search and of the thresholds it tunes. */
export interface Budget {
  /**
   * Thresholds certified by Learn-then-Test (see guarantee.ts): the default, with
   * `{ epsilon: 0.5, delta: 0.05 }`.
   */
  guarantee?: Guarantee;
  /** Instead: the point estimate's drop on the held-out data, in points (no guarantee on new data). */
  maxAccuracyDrop?: number;
}

export interface ChooseOptions extends Budget {
  /** The criteria to try; each set is tuned for the best of them. All three by default. */
  criteria?: readonly AdviseCriterion[];
  /** The most exits to choose; 4 by default. */
  maxExits?: number;
  /**
   * What each chosen exit must save, as a share of the network's latency: an exit is added
   * only when it lowers the expected latency by this much, and removed when it no longer
   * does. 0.01 by default: latencies measured on a busy machine move by about that from run
   * to run, and an exit chosen for less would be chosen for the noise.
   */
  minGain?: number;
}

/** One step of the search: an exit added or removed, and the expected latency after it. */
export interface SearchStep {
  step: 'add' | 'remove';
  point: number;
  expectedLatencyMs: number;
}

export interface ExitChoice {
  /** The chosen candidates' indices, in forward order; empty when no exit pays. */
  exits: number[];
  /** The chosen exits' thresholds, tuned on the held-out outputs under the budget. */
  calibration: Calibration;
  /** The expected latency per sample those thresholds predict (the network's own when nothing pays). */
  expectedLatencyMs: number;
  search: SearchStep[];
}

function budgetOf(options: Budget): Pick<Parameters<typeof calibrateThresholds>[1], 'guarantee' | 'maxAccuracyDrop'> {
  if (options.guarantee !== undefined && options.maxAccuracyDrop !== undefined) {
    throw new Error('advise: give either guarantee or maxAccuracyDrop, not both');
  }
  if (options.maxAccuracyDrop !== undefined) return { maxAccuracyDrop: options.maxAccuracyDrop };
  return { guarantee: options.guarantee ?? { epsilon: 0.5, delta: 0.05 } };
}

/** Thresholds for `exits` on the held-out outputs, and the latency they predict. */
export function calibrateSet(heldOut: HeldOutOutputs, exits: readonly number[], costs: CandidateCosts,
  criterion: AdviseCriterion, budget: Budget): { calibration: Calibration; expectedLatencyMs: number } {
  const outputs = [...exits.map((i) => heldOut.outputs[i]), heldOut.outputs[heldOut.outputs.length - 1]];
  const calibration = calibrateThresholds({ outputs, labels: heldOut.labels }, {
    criterion, exitCosts: costsOf(exits, costs), baselineCost: costs.baselineMs, ...budgetOf(budget),
  });
  // Exits that do not pay are not served: the network without them is.
  return { calibration, expectedLatencyMs: calibration.keepsFullNetwork ? costs.baselineMs : calibration.chosen.expectedCost };
}

/**
 * Chooses exits among the candidates whose held-out outputs are `heldOut.outputs` (every
 * candidate in forward order, then the final output): greedy addition then removal (see
 * the file's comment), for each criterion, the cheapest result kept.
 */
export function chooseExits(heldOut: HeldOutOutputs, costs: CandidateCosts, options: ChooseOptions = {}): ExitChoice {
  const candidates = heldOut.outputs.length - 1;
  if (costs.stopMs.length !== candidates || costs.rampMs.length !== candidates) {
    throw new Error(`chooseExits: ${candidates} candidates but costs for ${costs.stopMs.length} stops and ${costs.rampMs.length} ramps`);
  }
  const maxExits = options.maxExits ?? 4;
  if (!Number.isInteger(maxExits) || maxExits < 1) throw new Error(`chooseExits: maxExits must be an integer >= 1, got ${maxExits}`);
  const minGain = options.minGain ?? 0.01;
  if (!(minGain >= 0 && minGain < 1)) throw new Error(`chooseExits: minGain must be a share in [0, 1), got ${minGain}`);
  const gain = minGain * costs.baselineMs;
  let best: ExitChoice | undefined;
  for (const criterion of options.criteria ?? ['entropy', 'maxProbability', 'margin'] as const) {
    const at = (exits: number[]) => calibrateSet(heldOut, exits, costs, criterion, options);
    let exits: number[] = [];
    let current = at(exits);
    const search: SearchStep[] = [];
    while (exits.length < maxExits) {
      let step: { exits: number[]; result: ReturnType<typeof at>; point: number } | undefined;
      for (let c = 0; c < candidates; c++) {
        if (exits.includes(c)) continue;
        const trial = [...exits, c].sort((a, b) => a - b);
        const result = at(trial);
        if (result.expectedLatencyMs < (step?.result.expectedLatencyMs ?? current.expectedLatencyMs - gain)) step = { exits: trial, result, point: c };
      }
      if (!step) break;
      ({ exits, result: current } = step);
      search.push({ step: 'add', point: step.point, expectedLatencyMs: current.expectedLatencyMs });
    }
    for (let removed = true; removed && exits.length > 0;) {
      removed = false;
      for (const c of exits) {
        const trial = exits.filter((e) => e !== c);
        const result = at(trial);
        if (result.expectedLatencyMs < current.expectedLatencyMs + gain) {
          exits = trial;
          current = result;
          search.push({ step: 'remove', point: c, expectedLatencyMs: current.expectedLatencyMs });
          removed = true;
          break;
        }
      }
    }
    if (!best || current.expectedLatencyMs < best.expectedLatencyMs) {
      best = { exits, calibration: current.calibration, expectedLatencyMs: current.expectedLatencyMs, search };
    }
  }
  return best!;
}

export interface AdviseOptions extends ChooseOptions {
  /** Where the ramps learn (the backbone stays frozen). */
  train: LabelledData;
  /** Held-out data that chooses the exits and their thresholds; it should not be the data the result is reported on. */
  select: LabelledData;
  /** The candidate modules, in any order (the forward's is found); `candidatePoints` finds them by default. */
  points?: readonly string[];
  /** With `points` unset: how deep module names may be (see `candidatePoints`); 2 by default. */
  depth?: number;
  /** The ramp at each candidate, in PyTorch's syntax (`defaultRamp` by default). */
  ramp?: (point: string, shape: readonly number[], classes: number) => string;
  /** Passes over `train`; 2 by default. */
  epochs?: number;
  batchSize?: number;
  /** Adam's learning rate for the ramps; 0.001 by default. */
  lr?: number;
  seed?: number;
  /** Timed rounds per candidate after `warmup`; 50 and 10 by default. */
  runs?: number;
  warmup?: number;
  /** Hears of each training batch (progress bars). */
  onBatch?: (progress: BatchProgress) => void;
  /** Hears what advise is doing as it goes on to each stage. */
  onStage?: (stage: string) => void;
  /** Checked between batches and between candidates: stop early (Ctrl-C). */
  shouldStop?: () => boolean;
}

/** One candidate's line of the table. */
export interface AdvisedPoint {
  point: string;
  /** Its output for one sample. */
  shape: number[];
  /** The ramp trained there, in PyTorch's syntax. */
  ramp: string;
  /** The compiled network up to the candidate, at batch 1 (the stop less the ramp). */
  prefixLatencyMs: number;
  /** What the ramp and its decision add to a forward. */
  rampLatencyMs: number;
  /** The ramp's top-1 accuracy on the selection data (percent). */
  rampAccuracy: number;
  /** As the only exit, thresholds tuned under the budget: the share of samples leaving there. */
  share: number;
  /** And the expected latency saved against the network without exits (a fraction; negative when the ramp costs more than it saves). */
  saving: number;
}

export interface Advice {
  candidates: AdvisedPoint[];
  /** The chosen exit points, in forward order. */
  chosen: string[];
  /** The chosen exits as `[point, ramp in PyTorch's syntax]`, as the demo's `--exit point=ramp` takes them. */
  exitSpecs: Array<[string, string]>;
  /** The chosen exits with their trained ramps: `new EarlyExitModel(backbone, advice.exitsDef)` serves them. */
  exitsDef: ExitsDef;
  /** Every candidate with its trained ramp, in forward order, as `candidates`. */
  candidatesDef: ExitsDef;
  /** The chosen exits' thresholds on the selection data (calibrate them again on data that chose nothing to serve). */
  calibration: Calibration;
  baselineLatencyMs: number;
  expectedLatencyMs: number;
  /** 1 − expected over baseline latency. */
  saving: number;
  search: Array<{ step: 'add' | 'remove'; point: string; expectedLatencyMs: number }>;
  /** How the timed models were compiled ('oneDNN chains', 'oneDNN' or 'frozen'). */
  inferenceOptimization: string;
}

/**
 * Trains a ramp at every candidate on the frozen backbone, times every candidate compiled,
 * and chooses the exits (see the file's comment). The backbone is left as it was: no hooks,
 * its parameters' `requiresGrad` and its mode restored, its weights untouched.
 */
export async function advise(backbone: ScriptModule, options: AdviseOptions): Promise<Advice> {
  const stopped = () => options.shouldStop?.() ?? false;
  const stage = options.onStage ?? (() => undefined);
  const sample = options.select.images.narrow(0, 0, Math.min(2, options.select.images.shape[0]));
  // Every forward here is in eval mode: one in train mode would move batch norm's statistics.
  const classes = inEvalMode(backbone, () => noGrad(() => tidy(() => (backbone.forward(sample) as Tensor).shape[1])));
  const found = options.points ? inForwardOrder(backbone, options.points, sample) : candidatePoints(backbone, sample, { depth: options.depth });
  if (found.length === 0) throw new Error('advise: no module of the backbone can feed an exit (see candidatePoints); name some with options.points');
  const specs = found.map(({ point, shape }) => (options.ramp ?? ((_p, s, k) => defaultRamp(s, k)))(point, shape, classes));
  const ramps = specs.map((spec) => parseBranchSpec(spec));
  const device = sample.device;
  for (const ramp of ramps) ramp.to(device);

  const grads = backbone.parameters().map((p) => p.requiresGrad);
  const wasTraining = backbone.training;
  const all = new EarlyExitModel(backbone, found.map(({ point }, i) => [point, ramps[i]] as const));
  let heldOut: HeldOutOutputs;
  let costs: CandidateCosts;
  let optimization = '';
  try {
    all.freezeBackbone();
    stage(`training ${found.length} ramps on the frozen backbone (${options.train.images.shape[0]} samples)`);
    await trainEarlyExitAsync(all, options.train, {
      epochs: options.epochs ?? 2, batchSize: options.batchSize ?? 64, seed: options.seed ?? 0,
      // Each ramp learns from its own loss alone (the backbone is frozen), and Adam's steps do
      // not scale with the weights: equal weights train every ramp as if alone.
      lossWeights: found.map(() => 0.99 / found.length),
      optimizer: new Adam(ramps.flatMap((r) => r.parameters()), { lr: options.lr ?? 1e-3 }),
      onBatch: options.onBatch, shouldStop: options.shouldStop,
    });
    if (stopped()) throw new Error('advise: stopped');
    all.eval();
    heldOut = collectOutputs(all, options.select);
    stage(`timing ${found.length} candidates, each as the only exit of the compiled model`);
    const plain = all.plainBackbone({ device });
    all.eeMgr.detachExits(backbone);
    const full = optimizeForInference(plain);
    const one = sample.narrow(0, 0, 1);
    costs = { stopMs: [], rampMs: [], baselineMs: 0 };
    const baselines: number[] = [];
    for (let i = 0; i < found.length; i++) {
      if (stopped()) throw new Error('advise: stopped');
      const single = new EarlyExitModel(backbone, [[found[i].point, ramps[i]]]);
      try {
        single.optimizeForInference();
        optimization = single.inferenceOptimization ?? '';
        const timed = timeCandidate(single, full, one, options.runs ?? 50, options.warmup ?? 10);
        costs.stopMs.push(timed.stopMs);
        costs.rampMs.push(timed.rampMs);
        baselines.push(...timed.baselines);
      } finally {
        single.leaveInferenceMode();
        single.eeMgr.detachExits(backbone);
      }
    }
    costs.baselineMs = middle(baselines);
  } finally {
    if (all.eeMgr.exitPoints.length > 0) all.eeMgr.detachExits(backbone);
    backbone.parameters().forEach((p, i) => { p.requiresGrad = grads[i]; });
    backbone.train(wasTraining);
  }

  stage('choosing exits on the selection data');
  const choice = chooseExits(heldOut, costs, options);
  const candidates = found.map(({ point, shape }, i): AdvisedPoint => {
    const alone = calibrateSet(heldOut, [i], costs, choice.calibration.criterion as AdviseCriterion, options);
    const correct = noGrad(() => tidy(() => heldOut.outputs[i].argmax(1).eq(heldOut.labels).sum().item() as number));
    return {
      point, shape, ramp: specs[i], prefixLatencyMs: costs.stopMs[i] - costs.rampMs[i], rampLatencyMs: costs.rampMs[i],
      rampAccuracy: (100 * correct) / heldOut.labels.shape[0], share: alone.calibration.chosen.exitFractions[0],
      saving: 1 - alone.expectedLatencyMs / costs.baselineMs,
    };
  });
  for (const output of heldOut.outputs) output.dispose();
  return {
    candidates,
    chosen: choice.exits.map((i) => found[i].point),
    exitSpecs: choice.exits.map((i) => [found[i].point, specs[i]]),
    exitsDef: choice.exits.map((i) => [found[i].point, ramps[i]] as const),
    candidatesDef: found.map(({ point }, i) => [point, ramps[i]] as const),
    calibration: choice.calibration,
    baselineLatencyMs: costs.baselineMs,
    expectedLatencyMs: choice.expectedLatencyMs,
    saving: 1 - choice.expectedLatencyMs / costs.baselineMs,
    search: choice.search.map((s) => ({ ...s, point: found[s.point].point })),
    inferenceOptimization: optimization,
  };
}

/** The advice without its modules, for JSON. */
export function adviceSummary(advice: Advice): Omit<Advice, 'exitsDef' | 'candidatesDef'> {
  const { exitsDef: _chosen, candidatesDef: _all, ...summary } = advice;
  return summary;
}

/**
 * The given points in the order the forward reaches them (the cost model needs it; the
 * order they were given in does not matter), each with its output's shape for one sample.
 */
function inForwardOrder(backbone: ScriptModule, points: readonly string[], sample: Tensor): CandidatePoint[] {
  const reached: CandidatePoint[] = [];
  const modules = [...new Set(points)].map((point) => [point, backbone.getModule(point)] as const);
  for (const [point, module] of modules) {
    if (module.callsPerForward !== 1) {
      throw new Error(`advise: module '${point}' is called ${module.callsPerForward < 0 ? 'in a loop' : `${module.callsPerForward} times`} in one forward, so an exit there cannot stop it (see forwardEarlyExit)`);
    }
  }
  const handles = modules.map(([point, module]) => module.registerForwardHook((_m, _inputs, output) => {
    if (!(output instanceof Tensor)) throw new Error(`advise: module '${point}' does not give one tensor, so no exit can read its output`);
    reached.push({ point, shape: [1, ...output.shape.slice(1)] });
  }));
  try {
    inEvalMode(backbone, () => noGrad(() => tidy(() => backbone.forward(sample))));
  } finally {
    for (const handle of handles) handle.remove();
  }
  const missing = points.filter((point) => !reached.some((r) => r.point === point));
  if (missing.length > 0) throw new Error(`advise: the forward never reaches ${missing.map((p) => `'${p}'`).join(', ')}, so no exit there can be taken`);
  return reached;
}

/** `run` with the backbone in eval mode, its mode restored after. */
function inEvalMode<T>(backbone: ScriptModule, run: () => T): T {
  const training = backbone.training;
  backbone.eval();
  try {
    return run();
  } finally {
    backbone.train(training);
  }
}

/**
 * Times one candidate, paired round by round: stopped at it, passing it, and the network
 * without exits. The ramp's cost is the median of the paired differences (never below 0,
 * nor above the stop's).
 */
function timeCandidate(model: EarlyExitModel, full: ScriptModule, input: Tensor, runs: number, warmup: number) {
  const stop = { criterion: 'maxProbability' as const, thresholds: [0] };
  // Passing, the exit still decides (and says no), as a served exit does.
  const pass = { criterion: 'maxProbability' as const, thresholds: [NEVER] };
  const stops: number[] = [];
  const differences: number[] = [];
  const baselines: number[] = [];
  noGrad(() => {
    for (let round = 0; round < warmup + runs; round++) {
      const stopped = timeCall(() => model.forwardEarlyExit(input, stop).output);
      const passed = timeCall(() => model.forwardEarlyExit(input, pass).output);
      const baseline = timeCall(() => full.forward(input) as Tensor);
      if (round < warmup) continue;
      stops.push(stopped);
      differences.push(passed - baseline);
      baselines.push(baseline);
    }
  });
  // The two medians come from different rounds: on a busy machine the ramp's could exceed
  // the whole stop's, which would make the network before it cost less than nothing.
  const stopMs = middle(stops);
  return { stopMs, rampMs: Math.min(stopMs, Math.max(0, middle(differences))), baselines };
}
