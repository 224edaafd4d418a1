/**
 * The main job: early exits end to end on real digits. Trains the exits jointly with the
 * backbone, prints Distiller's statistics, calibrates thresholds, serves the held-out
 * digits one at a time with exits that really stop, and writes the numbers and the
 * trade-off curve.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../io/atomic-write';
import { loadMnist } from '../data/mnist';
import { Advice, advise, adviceSummary } from '../early-exit/advise';
import { Calibration, HeldOutOutputs, calibrateThresholds, collectOutputs, measureBaselineLatency, measureExitLatencies, policyOf } from '../early-exit/calibrate';
import { LabelFreeCriterion } from '../early-exit/criteria';
import { saveCheckpoint } from '../early-exit/checkpoint';
import { EarlyExitModel } from '../early-exit/model';
import { ServingReport, serveOneAtATime } from '../early-exit/serving';
import { EarlyExitStats } from '../early-exit/stats';
import { LabelledData, evaluateAccuracy, trainEarlyExitAsync } from '../early-exit/trainer';
import { InferenceOptimization } from '../binding';
import { load, optimizeForInference } from '../torch/jit';
import { load as loadExported } from '../torch/export';
import { Module } from '../torch/nn';
import { packageRoot } from '../util/package-root';
import { Tensor } from '../torch/tensor';
import { Adam } from '../torch/optim';
import * as torch from '../torch/torch';
import type { SequenceInput } from '../serving/server';
import { DemoOptions } from './args';
import { parseBranchSpec } from '../torch/branch-spec';
import { tradeOffSvg } from './plot';
import { batchBar, pct, printAdvice, table } from './console';

/** The bundled CNN and its exit. */
export const DEFAULT_MODEL = path.join(packageRoot(), 'models', 'mnist_cnn.pt');
export const DEFAULT_EXITS: Array<[string, string]> = [['features1', 'MaxPool2d(2),Flatten(),Linear(784,10)']];

/** Distiller's example threshold on each exit's cross-entropy. */
const DISTILLER_THRESHOLD = 0.9;

export interface DemoResults {
  seed: number;
  libtorch: string;
  threads: number;
  device: string;
  model: string;
  exitPoints: string[];
  lossWeights: number[];
  trainingSeconds: number;
  heldOutAccuracy: number[];
  distiller: { thresholds: number[]; report: ReturnType<EarlyExitStats['report']> };
  exitLatenciesMs: number[];
  /** How both models were compiled for inference: 'oneDNN chains', 'oneDNN' (optimize_for_inference) or 'frozen'. */
  inferenceOptimization: InferenceOptimization;
  /** The network without exits, compiled for inference like the early-exit model: what speed-ups are measured against. */
  baselineLatencyMs: number;
  /** How the held-out digits were split: the first part chose thresholds and criterion, the second was served and reported. */
  heldOutSplit: { calibration: number; report: number };
  calibration: Calibration;
  serving: ServingReport;
  /** What advise would choose on this backbone, beside the demo's fixed exit (see runDemo). */
  advice: ReturnType<typeof adviceSummary>;
}

/**
 * The chance that the certified thresholds lose more than --max-drop points on new data
 * (Learn-then-Test's δ): both demos serve thresholds that hold with probability 0.95.
 */
export const DELTA = 0.05;

/** Lets Ctrl-C stop the demo between steps. */
export interface StopSignal { stopped: boolean }

export class DemoInterrupted extends Error {}

/** What the demo's checkpoint says about serving it (its `extra.serving`). */
export interface DemoServing {
  /** The shape of one float sample; or `sequence`, for token ids. */
  inputShape?: number[];
  sequence?: SequenceInput;
  /** With `sequence`: the tokenizer file that makes the ids (`WordTokenizer.save`'s). */
  tokenizer?: string;
  policy: { criterion: LabelFreeCriterion; thresholds: Array<number | null> };
  /**
   * What chose nothing: loadMnist's settings, the held-out digits from `calibration` on; or
   * the SpamAssassin corpus's held-out e-mails, the second of `halveByGroup`'s halves.
   */
  data: { seed: number; train: number; test: number; calibration: number } | { corpus: 'spam-assassin'; calibration: number };
}

/** Runs the demo, printing as it goes; writes `results.json` and `tradeoff.svg` into `options.out` at the end. */
export async function runDemo(options: DemoOptions, signal: StopSignal = { stopped: false }, log: (line: string) => void = console.log): Promise<DemoResults> {
  torch.setNumThreads(options.threads);
  torch.manualSeed(options.seed);
  if (options.device !== 'cpu' && !torch.cuda.isAvailable()) {
    throw new Error(`--device ${options.device}: no CUDA device is available (torch.cuda.isAvailable() is false)`);
  }
  const modelFile = options.model ?? DEFAULT_MODEL;
  const exitSpecs = options.exits.length > 0 ? options.exits : DEFAULT_EXITS;
  const lossWeights = options.lossWeights ?? exitSpecs.map(() => 0.3 / exitSpecs.length);
  log(`torch-early-exit demo: LibTorch ${torch.version.libtorch}, ${options.threads} thread(s), ${options.device}, seed ${options.seed}`);

  const backbone = modelFile.endsWith('.pt2') ? loadExported(modelFile, { device: options.device }) : load(modelFile, { device: options.device });
  const model = new EarlyExitModel(backbone,
    exitSpecs.map(([point, spec]) => [point, parseBranchSpec(spec)] as const));
  model.to(options.device);
  checkExitsFit(model, options.device);
  const { train, test } = loadMnist({ train: options.train, test: options.test, seed: options.seed });
  log(`data: ${options.train} training and ${options.test} held-out digits of the mnist package`);
  const onDevice = (t: Tensor) => (options.device === 'cpu' ? t : t.to(options.device));
  const trainSet = { images: onDevice(train.images), labels: onDevice(train.labels) };
  const testSet = { images: onDevice(test.images), labels: onDevice(test.labels) };
  log(`model: ${modelFile}\nexits: ${exitSpecs.map(([p, s]) => `${p} -> ${s}`).join('; ')}; loss weights [${lossWeights}]`);

  const { names, heldOut, trainingSeconds, distiller } = await trainAndReport(model, trainSet, testSet, { ...options, lossWeights }, signal, log);
  // Thresholds and the criterion are chosen on one half of the held-out digits, and what
  // serving gives is reported on the other half, which chose nothing.
  const half = Math.round(testSet.images.shape[0] * options.calibrationSplit);
  if (half < 1 || half >= testSet.images.shape[0]) {
    throw new Error(`--calibration-split ${options.calibrationSplit} of ${testSet.images.shape[0]} digits leaves one side empty`);
  }
  const calibrationSet = { images: testSet.images.narrow(0, 0, half), labels: testSet.labels.narrow(0, 0, half) };
  const reportSet = { images: testSet.images.narrow(0, half, testSet.images.shape[0] - half), labels: testSet.labels.narrow(0, half, testSet.labels.shape[0] - half) };
  const calibrationOutputs = collectOutputs(model, calibrationSet);
  // Served as it is fastest: the model compiled for inference with its exits, against the
  // network without exits compiled the same way (an exported program as a TorchScript one).
  model.optimizeForInference();
  const compiledAs = `compiled for inference: ${model.inferenceOptimization}${model.backbone.isExportedProgram ? ', from the exported program' : ''}`;
  const sample = calibrationSet.images.narrow(0, 0, 1);
  const exitLatenciesMs = measureExitLatencies(model, sample, 50, 20);
  const baselineMs = measureBaselineLatency(model, sample, 50, 20);
  log(`\ncalibration on ${half} held-out digits: stopping at ${names.map((n, i) => `${n} ${exitLatenciesMs[i].toFixed(3)} ms`).join(', ')}, ` +
    `network without exits ${baselineMs.toFixed(3)} ms (batch 1, median, ${compiledAs})`);
  const calibration = certifiedCalibration(calibrationOutputs, options, exitLatenciesMs, baselineMs, 'digits', log);
  const policy = policyOf(calibration);
  if (signal.stopped) throw new DemoInterrupted('interrupted');
  const plain = model.plainBackbone({ device: options.device });
  const full = optimizeForInference(plain);
  const labels = Array.from(reportSet.labels.cpu().data() as BigInt64Array, Number);
  for (let i = 0; i < 50; i++) torch.tidy(() => { model.forwardEarlyExit(sample, policy); torch.noGrad(() => full.forward(sample)); });
  const serving = await serveOneAtATime(model, full, reportSet.images, labels, policy, () => signal.stopped);
  if (!serving) throw new DemoInterrupted('interrupted while serving');
  log(`\nserving the other ${labels.length} held-out digits (none used to calibrate) one at a time with real early exits (${calibration.criterion}):`);
  printServing(serving, 'samples', log);
  printGuarantee(calibration, serving, log);

  // Where advise would put exits on this backbone: ramps on the frozen network, trained on
  // the training digits and chosen on the calibration digits, beside the demo's fixed exit
  // (whose thresholds those digits chose too). Both are predictions on the same digits.
  if (signal.stopped) throw new DemoInterrupted('interrupted');
  log('\nadvise: where else exits could go on this backbone (ramps trained on the frozen network, chosen on the calibration digits):');
  // Cheap ramps learn fast: up to two passes over the training digits.
  const adviseEpochs = Math.max(1, Math.min(2, options.epochs));
  const bar = batchBar(adviseEpochs, []);
  let advice: Advice;
  try {
    advice = await advise(model.plainBackbone({ device: options.device }), {
      train: trainSet, select: calibrationSet, epochs: adviseEpochs, seed: options.seed,
      guarantee: { epsilon: options.maxAccuracyDrop, delta: DELTA }, onBatch: bar.onBatch, shouldStop: () => signal.stopped,
    });
  } catch (error) {
    // Ctrl-C stops advise as it stops training: the demo's interruption, not a failure.
    throw signal.stopped ? new DemoInterrupted('interrupted while advising') : error;
  } finally {
    bar.stop();
  }
  printAdvice(advice, half, log);
  // Savings, not milliseconds: advise times its models alternating with the network (colder
  // caches), the demo's calibration each alone, so only each one's ratio is comparable.
  const fixedMs = calibration.keepsFullNetwork ? baselineMs : calibration.chosen.expectedCost;
  log(`the demo's exit ${model.exitPoints.join(', ')} (trained with the network) saves ${pct(100 * (1 - fixedMs / baselineMs))} ` +
    `(expected ${fixedMs.toFixed(3)} ms per digit against ${baselineMs.toFixed(3)} ms); advise's ${advice.chosen.join(', ') || 'no exit'} ` +
    `would save ${pct(100 * advice.saving)} (${advice.expectedLatencyMs.toFixed(3)} ms against ${advice.baselineLatencyMs.toFixed(3)} ms, ` +
    `timed in its own runs); both at most ${options.maxAccuracyDrop} points lost with probability ${1 - DELTA}, predicted on the calibration digits`);

  const results: DemoResults = {
    seed: options.seed, libtorch: torch.version.libtorch, threads: options.threads, device: options.device,
    model: modelFile, exitPoints: model.exitPoints, lossWeights, trainingSeconds, heldOutAccuracy: heldOut,
    distiller, exitLatenciesMs,
    inferenceOptimization: model.inferenceOptimization!, baselineLatencyMs: baselineMs,
    heldOutSplit: { calibration: half, report: labels.length }, calibration, serving, advice: adviceSummary(advice),
  };
  writeResults(options.out, results, tradeOffSvg(calibration, `Early exits on MNIST: accuracy against speedup (${calibration.criterion})`));
  // What `torch-early-exit serve` serves: the trained model and its exits, the chosen policy,
  // and which digits chose nothing (the served half of the held-out digits).
  const servingSettings: DemoServing = {
    inputShape: [1, 28, 28], policy: { criterion: policy.criterion, thresholds: [...policy.thresholds] },
    data: { seed: options.seed, train: options.train, test: options.test, calibration: half },
  };
  saveCheckpoint(path.join(options.out, 'checkpoint'), model, { extra: { serving: servingSettings } });
  log(`\nwrote ${path.join(options.out, 'results.json')}, ${path.join(options.out, 'tradeoff.svg')} and the checkpoint ` +
    `${path.join(options.out, 'checkpoint')} (torch-early-exit serve serves it)`);
  return results;
}

/**
 * Thresholds certified by Learn-then-Test on `outputs` for each criterion (one, or the three
 * that can be certified with --criterion auto), printed; the cheapest certified one is
 * returned (every exit off when none is).
 */
export function certifiedCalibration(outputs: HeldOutOutputs, options: Pick<DemoOptions, 'criterion' | 'maxAccuracyDrop'>,
  exitLatenciesMs: number[], baselineMs: number, unit: string, log: (line: string) => void): Calibration {
  const criteria = options.criterion !== 'auto' ? [options.criterion] : ['entropy', 'maxProbability', 'margin'] as const;
  const guarantee = { epsilon: options.maxAccuracyDrop, delta: DELTA };
  const calibrations = criteria.map((criterion) => calibrateThresholds(outputs, {
    criterion, exitCosts: exitLatenciesMs, baselineCost: baselineMs, guarantee,
  }));
  const calibration = [...calibrations].sort((a, b) => b.chosen.speedup - a.chosen.speedup)[0];
  for (const c of calibrations) {
    const certificate = c.guarantee!;
    log(`  ${c.criterion.padEnd(15)} ${certificate.certified
      ? `thresholds [${c.chosen.thresholds.map((t) => (t === null ? 'never' : t.toFixed(4)))}], certified: at most ` +
        `${certificate.bound.toFixed(2)} points lost on new ${unit} with probability ${1 - DELTA}; expected speedup ${c.chosen.speedup.toFixed(2)}x`
      : 'nothing certified: every exit off'}`);
  }
  log(`  chosen: ${calibration.criterion} (final exit alone: ${pct(calibration.finalAccuracy)}; allowed drop ${options.maxAccuracyDrop} points, ` +
    `with probability ${1 - DELTA})`);
  if (calibration.keepsFullNetwork) {
    log(`  every exit is off (${calibration.guarantee!.certified ? 'no certified thresholds are faster than the network without exits' : 'nothing certified'}): ` +
      'the network without exits is the one to serve; the serving below shows what the exits would cost');
  }
  return calibration;
}

/** The guarantee beside what serving gave: ε, δ, the certified bound and the points actually lost. */
export function printGuarantee(calibration: Calibration, serving: ServingReport, log: (line: string) => void): void {
  const certificate = calibration.guarantee!;
  log(`guarantee: at most ε = ${certificate.epsilon} points lost with probability 1 − δ = ${1 - certificate.delta} ` +
    `(Learn-then-Test on ${certificate.samples} samples); certified bound ${certificate.bound.toFixed(2)} points` +
    `${certificate.certified ? '' : ' (nothing certified: every exit off)'}; lost here: ${(serving.fullAccuracy - serving.accuracy).toFixed(2)} points`);
}

/** What serving one at a time gave: per exit, all together, the network without exits, and the speed-up. */
export function printServing(serving: ServingReport, unit: string, log: (line: string) => void): void {
  const count = String(serving.exits.reduce((sum, e) => sum + e.samples, 0));
  log(table([['exit', unit, 'share', 'accuracy', 'mean latency'],
    ...serving.exits.map((e) => [e.exit, String(e.samples), pct(e.share), pct(e.accuracy), `${e.meanLatencyMs.toFixed(3)} ms`]),
    ['all, early exits', count, '100.00%', pct(serving.accuracy), `${serving.meanLatencyMs.toFixed(3)} ms`],
    ['full network', count, '', pct(serving.fullAccuracy), `${serving.fullMeanLatencyMs.toFixed(3)} ms`]]));
  log(`speedup against the full network: ${serving.speedup.toFixed(2)}x at ${(serving.fullAccuracy - serving.accuracy).toFixed(2)} points of accuracy`);
}

/**
 * The demo's first half, on any task: trains with a progress bar, then prints Distiller's
 * statistics on `testSet`. The outputs' names, the held-out accuracy, the training time.
 */
export async function trainAndReport(model: EarlyExitModel, trainSet: LabelledData, testSet: LabelledData,
  options: Parameters<typeof trainWithProgress>[3], signal: StopSignal, log: (line: string) => void) {
  const trainingStarted = Date.now();
  const names = [...model.exitPoints.map((_, i) => `exit${i}`), 'final'];
  const heldOut = await trainWithProgress(model, trainSet, testSet, options, names, signal, log);
  const trainingSeconds = (Date.now() - trainingStarted) / 1000;
  const distiller = printDistillerStatistics(model, testSet, names, log);
  if (signal.stopped) throw new DemoInterrupted('interrupted');
  return { names, heldOut, trainingSeconds, distiller };
}

/** Trains the exits (and whatever else has gradients) with a progress bar; the held-out accuracy per output after the last epoch. */
export async function trainWithProgress(model: EarlyExitModel, trainSet: LabelledData, validation: LabelledData,
  options: Pick<DemoOptions, 'epochs' | 'batchSize' | 'seed' | 'optimizer' | 'lr'> & { lossWeights: number[] },
  names: string[], signal: StopSignal, log: (line: string) => void): Promise<number[]> {
  const bar = batchBar(options.epochs, names);
  let heldOut: number[] | undefined;
  try {
    torch.manualSeed(options.seed);
    const optimizer = options.optimizer === 'adam'
      ? new Adam(model.parameters().filter((p) => p.requiresGrad), { lr: options.lr ?? 1e-3 })
      : undefined;
    heldOut = await trainEarlyExitAsync(model, trainSet, {
      epochs: options.epochs, batchSize: options.batchSize, lossWeights: options.lossWeights, seed: options.seed, validation,
      optimizer, lr: options.lr,
      shouldStop: () => signal.stopped,
      onBatch: bar.onBatch,
      onEpoch: (epoch, accuracy) => {
        bar.stop();
        if (accuracy) log(`  held-out after epoch ${epoch + 1}: ${accuracy.map((a, i) => `${names[i]} ${pct(a)}`).join(', ')}`);
      },
    });
  } finally {
    // A bar left running keeps a timer, and the process, alive.
    bar.stop();
  }
  if (signal.stopped) throw new DemoInterrupted('interrupted while training');
  model.eval();
  return heldOut ?? evaluateAccuracy(model, validation);
}

/** Distiller's statistics on `data`: every exit computed, the first under its cross-entropy threshold taken; printed and returned. */
export function printDistillerStatistics(model: EarlyExitModel, data: LabelledData, names: string[], log: (line: string) => void):
  DemoResults['distiller'] {
  const outputs = collectOutputs(model, data);
  const thresholds = model.exitPoints.map(() => DISTILLER_THRESHOLD);
  const stats = new EarlyExitStats(thresholds);
  stats.add(outputs.outputs, outputs.labels);
  const report = stats.report();
  log(`\nDistiller's statistics (cross-entropy thresholds [${thresholds}]: what would have happened):`);
  log(table([['output', 'taken', 'percent', 'top-1', 'top-5', 'mean loss'],
    ...names.map((name, i) => [name, String(report.exitTaken[i]), pct(report.percentTaken[i]), pct(report.top1[i]),
      pct(report.top5[i]), report.lossMeans[i].toFixed(4)])]));
  log(`totals with early exits: top-1 ${pct(report.totalTop1)}, top-5 ${pct(report.totalTop5)}`);
  return { thresholds, report };
}

/**
 * One forward of a blank digit before any data loads: a branch that does not fit its exit
 * point, or gives another shape than the model's output, fails now, naming the exit.
 */
function checkExitsFit(model: EarlyExitModel, device: string): void {
  const digit = [1, 1, 28, 28];
  const outputs = torch.noGrad(() => {
    try {
      return model.forward(torch.zeros(digit, { device }));
    } catch (error) {
      const reason = (error as Error).message.split('\n')[0];
      throw new Error(`the exits do not fit the model on MNIST digits of shape [${digit.join(', ')}]: ${failingLayer(model, digit, device) ?? reason}`);
    }
  });
  const final = outputs[outputs.length - 1].shape;
  model.exitPoints.forEach((point, i) => {
    const shape = outputs[i].shape;
    if (shape.length !== final.length || shape.some((size, d) => size !== final[d])) {
      throw new Error(`the exit at '${point}' gives [${shape.join(', ')}] for one digit but the model's output is [${final.join(', ')}]: ` +
        'a branch must end in as many classes as the model');
    }
  });
  for (const output of outputs) output.dispose();
}

/** Which layer of which branch refuses its input, with both shapes, or undefined. */
function failingLayer(model: EarlyExitModel, digit: number[], device: string): string | undefined {
  // What each exit point gives, from the backbone alone (hooks that only look).
  const plain = model.plainBackbone({ device });
  const shapes = new Map<string, number[]>();
  for (const point of model.exitPoints) {
    plain.getModule(point).registerForwardHook((_module, _inputs, output) => { if (output instanceof Tensor) shapes.set(point, output.shape); });
  }
  torch.noGrad(() => plain.forward(torch.zeros(digit, { device })));
  for (let i = 0; i < model.exitPoints.length; i++) {
    const point = model.exitPoints[i];
    const branch = model.branches[i] as Module;
    const shape = shapes.get(point);
    if (!shape || typeof branch.namedChildren !== 'function') continue;
    const layers = branch.namedChildren().length > 0 ? branch.namedChildren() : [['0', branch] as [string, Module]];
    let x = torch.zeros(shape, { device });
    for (const [name, layer] of layers) {
      try {
        x = torch.noGrad(() => layer.forward(x));
      } catch (error) {
        return `the exit at '${point}' gives [${shape.join(', ')}]; layer ${name} of its branch, ${layer.toString()}, ` +
          `cannot take its input of shape [${x.shape.join(', ')}]: ${(error as Error).message.split('\n')[0]}`;
      }
    }
  }
  return undefined;
}

/**
 * Writes the two result files into `out`, each through a temporary file and a rename: never
 * a half-written result, and nothing else in the folder is touched.
 */
export function writeResults(out: string, results: object, svg: string): void {
  fs.mkdirSync(out, { recursive: true });
  writeFileAtomic(path.join(out, 'results.json'), JSON.stringify(results, null, 2) + '\n', 'demo');
  writeFileAtomic(path.join(out, 'tradeoff.svg'), svg, 'demo');
}
