/**
 * The main job: early exits end to end on real digits. Trains the exits jointly with the
 * backbone, prints Distiller's statistics, calibrates thresholds, serves the held-out
 * digits one at a time with exits that really stop, and writes the numbers and the
 * trade-off curve.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeFileAtomic } from '../io/atomic-write';
import { SingleBar, Presets } from 'cli-progress';
import { loadMnist } from '../data/mnist';
import { Calibration, calibrateThresholds, collectOutputs, measureBaselineLatency, measureExitLatencies, policyOf } from '../early-exit/calibrate';
import { LabelFreeCriterion } from '../early-exit/criteria';
import { saveCheckpoint } from '../early-exit/checkpoint';
import { EarlyExitModel } from '../early-exit/model';
import { ServingReport, serveOneAtATime } from '../early-exit/serving';
import { EarlyExitStats } from '../early-exit/stats';
import { BatchProgress, LabelledData, evaluateAccuracy, trainEarlyExitAsync } from '../early-exit/trainer';
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
  /** How both models were compiled for inference: 'oneDNN' (optimize_for_inference) or 'frozen' where oneDNN cannot run. */
  inferenceOptimization: InferenceOptimization;
  /** The network without exits, compiled for inference like the early-exit model: what speed-ups are measured against. */
  baselineLatencyMs: number;
  /** How the held-out digits were split: the first part chose thresholds and criterion, the second was served and reported. */
  heldOutSplit: { calibration: number; report: number };
  calibration: Calibration;
  serving: ServingReport;
}

/**
 * Thresholds keep the accuracy drop within --max-drop with this confidence on new digits,
 * not only on the calibration digits (on which a point estimate breaks the budget on new
 * data about half the time).
 */
const CONFIDENCE = 0.95;

/** Lets Ctrl-C stop the demo between steps. */
export interface StopSignal { stopped: boolean }

export class DemoInterrupted extends Error {}

export function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  return rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ')).join('\n');
}

export function pct(value: number): string { return `${value.toFixed(2)}%`; }

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
  const criteria: LabelFreeCriterion[] = options.criterion !== 'auto' ? [options.criterion] : ['entropy', 'maxProbability', 'margin'];
  if (options.criterion === 'auto' && model.exitPoints.length > 1) criteria.push('patience');
  const calibrations = criteria.map((criterion) => calibrateThresholds(calibrationOutputs, {
    criterion, exitCosts: exitLatenciesMs, baselineCost: baselineMs, maxAccuracyDrop: options.maxAccuracyDrop,
    confidence: CONFIDENCE,
  }));
  const floor = calibrations[0].finalAccuracy - options.maxAccuracyDrop;
  const calibration = calibrations.filter((c) => c.chosen.accuracyBound >= floor)
    .sort((a, b) => b.chosen.speedup - a.chosen.speedup)[0] ?? calibrations[0];
  const policy = policyOf(calibration);
  log(`\ncalibration on ${half} held-out digits: stopping at ${names.map((n, i) => `${n} ${exitLatenciesMs[i].toFixed(3)} ms`).join(', ')}, ` +
    `network without exits ${baselineMs.toFixed(3)} ms (batch 1, median, ${compiledAs})`);
  for (const c of calibrations) {
    log(`  ${c.criterion.padEnd(15)} thresholds [${c.chosen.thresholds.map((t) => (t === null ? 'never' : t.toFixed(4)))}] ` +
      `accuracy ${pct(c.chosen.accuracy)} (at least ${pct(c.chosen.accuracyBound)} with ${100 * CONFIDENCE}% confidence) ` +
      `expected speedup ${c.chosen.speedup.toFixed(2)}x`);
  }
  log(`  chosen: ${calibration.criterion} (final exit alone: ${pct(calibration.finalAccuracy)}, allowed drop ${options.maxAccuracyDrop} points)`);
  if (calibration.keepsFullNetwork) {
    log('  no thresholds make early exits faster than the network without exits here: every exit is off (null), and the ' +
      'network without exits is the one to serve; the serving below shows what the exits would cost');
  }

  if (signal.stopped) throw new DemoInterrupted('interrupted');
  const plain = model.plainBackbone({ device: options.device });
  const full = optimizeForInference(plain);
  const labels = Array.from(reportSet.labels.cpu().data() as BigInt64Array, Number);
  for (let i = 0; i < 50; i++) torch.tidy(() => { model.forwardEarlyExit(sample, policy); torch.noGrad(() => full.forward(sample)); });
  const serving = await serveOneAtATime(model, full, reportSet.images, labels, policy, () => signal.stopped);
  if (!serving) throw new DemoInterrupted('interrupted while serving');
  log(`\nserving the other ${labels.length} held-out digits (none used to calibrate) one at a time with real early exits (${calibration.criterion}):`);
  printServing(serving, 'samples', log);
  log(`  (calibration predicted ${calibration.chosen.speedup.toFixed(2)}x at ` +
    `${(calibration.finalAccuracy - calibration.chosen.accuracy).toFixed(2)} points on its own ${half} digits)`);

  const results: DemoResults = {
    seed: options.seed, libtorch: torch.version.libtorch, threads: options.threads, device: options.device,
    model: modelFile, exitPoints: model.exitPoints, lossWeights, trainingSeconds, heldOutAccuracy: heldOut,
    distiller, exitLatenciesMs,
    inferenceOptimization: model.inferenceOptimization!, baselineLatencyMs: baselineMs,
    heldOutSplit: { calibration: half, report: labels.length }, calibration, serving,
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

/**
 * A progress bar per epoch of training: `onBatch` for `TrainOptions.onBatch`, showing the
 * loss and each output's batch accuracy (the outputs named by `names`; none when empty); `stop` ends the current bar (always call it: a bar
 * left running keeps a timer, and the process, alive).
 */
export function batchBar(epochs: number, names: readonly string[]): { onBatch: (p: BatchProgress) => void; stop: () => void } {
  let bar: SingleBar | undefined;
  return {
    onBatch: (p) => {
      if (p.batch === 0) {
        bar?.stop();
        bar = new SingleBar({
          format: `epoch ${p.epoch + 1}/${epochs} |{bar}| {value}/{total} loss {loss}${names.length > 0 ? ' acc {accuracy}' : ''}`,
          hideCursor: true, clearOnComplete: false, noTTYOutput: true, notTTYSchedule: 5000, stream: process.stdout,
        }, Presets.shades_classic);
        bar.start(p.batches, 0, { loss: '-', accuracy: '-' });
      }
      bar!.update(p.batch + 1, {
        loss: p.loss.toFixed(3), accuracy: p.accuracy.map((a, i) => `${names[i]} ${a.toFixed(0)}%`).join(' '),
      });
    },
    stop: () => {
      bar?.stop();
      bar = undefined;
    },
  };
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
