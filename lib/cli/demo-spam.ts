/**
 * The demo on text (`demo --task spam`): DeeBERT's off-ramps after the layers of a BERT-style
 * encoder that tells spam from ham, on the real e-mails of the SpamAssassin corpus. The
 * encoder comes trained (DeeBERT's first stage: scripts/make_transformer_fixtures.py, by the
 * PyTorch beside this LibTorch); the demo does the second stage, the off-ramps on the frozen
 * encoder, then prints Distiller's statistics, certifies thresholds on one half of the
 * held-out e-mails (Learn-then-Test: at most --max-drop points lost, with probability 0.95)
 * and serves the other half one e-mail at a time, each at its own length, with exits that
 * really stop, against the encoder without exits.
 */
import * as fs from 'fs';
import * as path from 'path';
import { emailLabels, halveByGroup, loadSpamAssassin, splitEmails } from '../data/spam-assassin';
import { Calibration, collectOutputs, measureBaselineLatency, measureExitLatencies, policyOf } from '../early-exit/calibrate';
import { saveCheckpoint } from '../early-exit/checkpoint';
import { EarlyExitModel } from '../early-exit/model';
import { ServingReport, serveOneAtATime } from '../early-exit/serving';
import { WordTokenizer } from '../text/tokenizer';
import { load, optimizeForInference } from '../torch/jit';
import { load as loadExported } from '../torch/export';
import { Tensor } from '../torch/tensor';
import * as torch from '../torch/torch';
import { packageRoot } from '../util/package-root';
import { DemoOptions } from './args';
import { parseBranchSpec } from '../torch/branch-spec';
import {
  DemoInterrupted, DemoResults, DemoServing, StopSignal, certifiedCalibration, printGuarantee, printServing, trainAndReport, writeResults,
} from './demo';
import { tradeOffSvg } from './plot';

const FIXTURES = path.join(packageRoot(), 'test', 'fixtures');

/** The fixture encoder's tokenizer, which `npm run fixtures` writes. */
export const SPAM_TOKENIZER = path.join(FIXTURES, 'spam_tokenizer.json');

/** DeeBERT's off-ramp for the fixture's 64-wide encoder: the [CLS] token, a pooler (Linear, Tanh), a classifier. */
export const SPAM_EXITS: Array<[string, string]> = ['encoder.layers.0', 'encoder.layers.1', 'encoder.layers.2']
  .map((point) => [point, 'Select(1, 0), Linear(64, 64), Tanh(), Linear(64, 2)']);

export interface SpamDemoResults extends Omit<DemoResults, 'calibration' | 'serving' | 'heldOutSplit' | 'advice'> {
  tokenizer: string;
  heldOutSplit: { calibration: number; report: number };
  calibration: Calibration;
  serving: ServingReport;
}

/** The fixture encoder: the exported program where this PyTorch wrote one, else TorchScript. */
function defaultModel(): string {
  for (const file of ['text_encoder_exported.pt2', 'text_encoder_scripted.pt']) {
    if (fs.existsSync(path.join(FIXTURES, file))) return path.join(FIXTURES, file);
  }
  throw new Error(`--task spam needs the trained text encoder, which npm run fixtures makes in a checkout ` +
    `(scripts/make_transformer_fixtures.py writes ${path.join(FIXTURES, 'text_encoder_scripted.pt')}); or pass --model and --tokenizer`);
}

export async function runSpamDemo(options: DemoOptions, signal: StopSignal = { stopped: false }, log: (line: string) => void = console.log): Promise<SpamDemoResults> {
  torch.setNumThreads(options.threads);
  torch.manualSeed(options.seed);
  if (options.device !== 'cpu' && !torch.cuda.isAvailable()) {
    throw new Error(`--device ${options.device}: no CUDA device is available (torch.cuda.isAvailable() is false)`);
  }
  const modelFile = options.model ?? defaultModel();
  const tokenizerFile = options.tokenizer ?? SPAM_TOKENIZER;
  const exitSpecs = options.exits.length > 0 ? options.exits : SPAM_EXITS;
  const lossWeights = options.lossWeights ?? exitSpecs.map(() => 0.9 / exitSpecs.length);
  log(`torch-early-exit demo (spam): LibTorch ${torch.version.libtorch}, ${options.threads} thread(s), ${options.device}, seed ${options.seed}`);

  const tokenizer = WordTokenizer.load(tokenizerFile);
  const backbone = modelFile.endsWith('.pt2') ? loadExported(modelFile, { device: options.device }) : load(modelFile, { device: options.device });
  const model = new EarlyExitModel(backbone, exitSpecs.map(([point, spec]) => [point, parseBranchSpec(spec)] as const));
  model.to(options.device);
  // DeeBERT's second stage: the encoder stays as trained, only the off-ramps learn.
  model.freezeBackbone();

  const { train, test } = splitEmails(loadSpamAssassin());
  const [calibrationEmails, reportEmails] = halveByGroup(test);
  const held = [...calibrationEmails, ...reportEmails];
  const onDevice = (t: Tensor) => (options.device === 'cpu' ? t : t.to(options.device));
  const encode = (emails: typeof train) => ({
    images: onDevice(tokenizer.encodeBatch(emails.map((email) => email.text)).inputIds), labels: onDevice(emailLabels(emails)),
  });
  const trainSet = encode(train);
  const testSet = encode(held);
  log(`data: ${train.length} training and ${test.length} held-out e-mails of the SpamAssassin corpus ` +
    `(held out by their MD5, as scripts/spam_text.py holds them out), ${tokenizer.maxLength} tokens at most`);
  log(`model: ${modelFile} (frozen), tokenizer ${tokenizerFile}\nexits: ${exitSpecs.map(([p, s]) => `${p} -> ${s}`).join('; ')}; ` +
    `loss weights [${lossWeights.map((w) => w.toFixed(2))}]`);

  const { names, heldOut, trainingSeconds, distiller } = await trainAndReport(model, trainSet, testSet, { ...options, lossWeights }, signal, log);
  const half = calibrationEmails.length;
  const calibrationSet = { images: testSet.images.narrow(0, 0, half), labels: testSet.labels.narrow(0, 0, half) };
  const calibrationOutputs = collectOutputs(model, calibrationSet);
  // One e-mail at its own length, as a server gets it: a batch of one has no padding.
  const alone = (email: (typeof train)[number]) => onDevice(tokenizer.encodeBatch([email.text]).inputIds);
  model.optimizeForInference();
  const compiledAs = `compiled for inference: ${model.inferenceOptimization}${model.backbone.isExportedProgram ? ', from the exported program' : ''}`;
  // Costs at the median length of the calibration e-mails (each tokenized once here).
  const lengths = calibrationEmails.map((email) => tokenizer.encode(email.text).length);
  const byLength = calibrationEmails.map((_, i) => i).sort((a, b) => lengths[a] - lengths[b]);
  const typical = alone(calibrationEmails[byLength[Math.floor(byLength.length / 2)]]);
  const exitLatenciesMs = measureExitLatencies(model, typical, 50, 20);
  const baselineMs = measureBaselineLatency(model, typical, 50, 20);
  log(`\ncalibration on ${half} held-out e-mails: stopping at ${names.map((n, i) => `${n} ${exitLatenciesMs[i].toFixed(3)} ms`).join(', ')}, ` +
    `network without exits ${baselineMs.toFixed(3)} ms (one e-mail of ${typical.shape[1]} tokens, median, ${compiledAs})`);
  const calibration = certifiedCalibration(calibrationOutputs, options, exitLatenciesMs, baselineMs, 'e-mails', log);
  const policy = policyOf(calibration);

  if (signal.stopped) throw new DemoInterrupted('interrupted');
  const full = optimizeForInference(model.plainBackbone({ device: options.device }));
  for (let i = 0; i < 50; i++) torch.tidy(() => { model.forwardEarlyExit(typical, policy); torch.noGrad(() => full.forward(typical)); });
  // Every length once, both models: TorchScript's executor specialises a compiled graph to the
  // shapes it meets, and LibTorch 2.14's CPU fuser compiles a kernel for each new one (0.3 to
  // 1 s each, measured), which would otherwise land in the first e-mails of each length.
  // Each exit's stop too: the part of the graph after an exit is specialised when a forward reaches it.
  const stopAt = [...model.exitPoints.keys(), model.exitPoints.length].map((k) => ({
    criterion: 'maxProbability' as const, thresholds: model.exitPoints.map((_, i) => (i === k ? 0 : null)),
  }));
  for (let length = 1; length <= tokenizer.maxLength; length++) {
    torch.tidy(() => {
      const ids = onDevice(torch.tensor(BigInt64Array.from({ length }, () => BigInt(WordTokenizer.UNK)), { shape: [1, length] }));
      for (const stop of stopAt) model.forwardEarlyExit(ids, stop);
      torch.noGrad(() => full.forward(ids));
    });
  }
  const labels = reportEmails.map((email) => email.label);
  const serving = await serveOneAtATime(model, full, (i) => alone(reportEmails[i]), labels, policy, () => signal.stopped);
  if (!serving) throw new DemoInterrupted('interrupted while serving');
  log(`\nserving the other ${labels.length} held-out e-mails (none used to calibrate) one at a time, each at its own length, ` +
    `with real early exits (${calibration.criterion}):`);
  printServing(serving, 'e-mails', log);
  printGuarantee(calibration, serving, log);

  const results: SpamDemoResults = {
    seed: options.seed, libtorch: torch.version.libtorch, threads: options.threads, device: options.device,
    model: modelFile, tokenizer: tokenizerFile, exitPoints: model.exitPoints, lossWeights, trainingSeconds, heldOutAccuracy: heldOut,
    distiller, exitLatenciesMs, inferenceOptimization: model.inferenceOptimization!, baselineLatencyMs: baselineMs,
    heldOutSplit: { calibration: half, report: labels.length }, calibration, serving,
  };
  writeResults(options.out, results, tradeOffSvg(calibration, `Early exits on SpamAssassin e-mails: accuracy against speedup (${calibration.criterion})`));
  // What `torch-early-exit serve` serves: token ids up to the tokenizer's length, padded with
  // [PAD] into batches (the encoder masks it), the certified policy, and which e-mails chose
  // nothing (the second half of the held-out ones).
  const servingSettings: DemoServing = {
    sequence: { maxLength: tokenizer.maxLength, padId: WordTokenizer.PAD, vocabularySize: tokenizer.size },
    tokenizer: path.resolve(tokenizerFile),
    policy: { criterion: policy.criterion, thresholds: [...policy.thresholds] },
    data: { corpus: 'spam-assassin', calibration: half },
  };
  saveCheckpoint(path.join(options.out, 'checkpoint'), model, { extra: { serving: servingSettings } });
  log(`\nwrote ${path.join(options.out, 'results.json')}, ${path.join(options.out, 'tradeoff.svg')} and the checkpoint ` +
    `${path.join(options.out, 'checkpoint')} (torch-early-exit serve serves it)`);
  return results;
}
