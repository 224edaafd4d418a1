/**
 * bench:inference on the two transformers, the demo's way: DeeBERT's off-ramps after the
 * first three encoder layers, trained on the training split with the backbone frozen
 * (DeeBERT's second stage); thresholds certified on one half of the held-out split by
 * Learn-then-Test (at most 0.5 points lost with probability 0.95: `guarantee`);
 * everything reported (accuracy, exits taken, speed-up) measured on the other half, which
 * chose nothing. Served one at a time (each e-mail at its own length, as a server gets it)
 * and in batches of 32 (e-mails of mixed lengths padded to the longest, masked), against
 * the same backbone without exits, the two paired request by request. Both sides run
 * compiled for inference, as `serve` runs them (the exits' side carries the padding mask
 * past its exits, so per-sample exits take it), with TorchScript's CPU fuser off as `serve`
 * turns it off: on LibTorch 2.14 it compiles a kernel for every new shape.
 */
import * as fs from 'fs';
import * as path from 'path';
import {
  EarlyExitModel, Email, LabelledData, ScriptModule, Tensor, WordTokenizer, calibrateThresholds, collectOutputs, emailLabels,
  halveByGroup, jit, loadMnist, loadSpamAssassin, measureExitLatencies, nn, policyOf, splitEmails, torch, trainEarlyExit,
} from '../lib';
import { packageRoot } from '../lib/util/package-root';

const FIXTURES = path.join(packageRoot(), 'test', 'fixtures');

/** One transformer and its data, as the bench needs them. */
interface Task {
  name: string;
  /** The exported program where this PyTorch wrote one (per-sample exits across the mask), else TorchScript. */
  load: () => { backbone: ScriptModule; form: string };
  points: string[];
  ramp: () => nn.Sequential;
  train: LabelledData;
  /** The held-out samples, in batches of any size (padded to their longest). */
  heldOut: number;
  /** The first `calibration` held-out samples calibrate; the rest report. */
  calibration: number;
  labels: number[];
  batch: (start: number, count: number) => Tensor;
  /** How a batch of 32 is made, for the table. */
  batchNote: string;
  /** One held-out sample alone: an e-mail at its own length. */
  one: (i: number) => Tensor;
  /** Its length in tokens (1 for a digit). */
  length: (i: number) => number;
  epochs: number;
}

function loadBackbone(stem: string): () => { backbone: ScriptModule; form: string } {
  const exported = path.join(FIXTURES, `${stem}_exported.pt2`);
  const scripted = path.join(FIXTURES, `${stem}_scripted.pt`);
  if (!fs.existsSync(scripted)) throw new Error(`${scripted} is missing: run npm run fixtures first`);
  return () => (fs.existsSync(exported)
    ? { backbone: torch.export.load(exported), form: 'exported program' }
    : { backbone: jit.load(scripted), form: 'TorchScript (no torch.export in this PyTorch)' });
}

/** The SpamAssassin split, its held-out e-mails halved within groups (`halveByGroup`), calibration first. */
export function spamSplit(): { train: Email[]; test: Email[]; calibration: number; tokenizer: WordTokenizer } {
  const { train, test } = splitEmails(loadSpamAssassin());
  const [calibration, report] = halveByGroup(test);
  return {
    train, test: [...calibration, ...report], calibration: calibration.length,
    tokenizer: WordTokenizer.load(path.join(FIXTURES, 'spam_tokenizer.json')),
  };
}

function spamTask(): Task {
  const { train, test, calibration, tokenizer } = spamSplit();
  const texts = test.map((email) => email.text);
  // Each e-mail tokenized once for its length (sorting asks for it many times).
  const lengths = texts.map((text) => tokenizer.encode(text).length);
  return {
    name: 'text encoder, SpamAssassin',
    load: loadBackbone('text_encoder'),
    points: ['encoder.layers.0', 'encoder.layers.1', 'encoder.layers.2'],
    ramp: () => nn.Sequential(nn.Select(1, 0), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)),
    train: { images: tokenizer.encodeBatch(train.map((email) => email.text)).inputIds, labels: emailLabels(train) },
    heldOut: test.length,
    calibration,
    labels: test.map((email) => email.label),
    batch: (start, count) => tokenizer.encodeBatch(texts.slice(start, start + count)).inputIds,
    batchNote: 'mixed lengths, padded',
    // A batch of one has no padding.
    one: (i) => tokenizer.encodeBatch([texts[i]]).inputIds,
    length: (i) => lengths[i],
    epochs: 8,
  };
}

function digitsTask(): Task {
  // The split the ViT fixture was trained on (scripts/make_transformer_fixtures.py).
  const { train, test } = loadMnist({ train: 8000, test: 2000, seed: 0 });
  return {
    name: 'vision transformer, mnist digits',
    load: loadBackbone('vit'),
    points: ['layers.0', 'layers.1', 'layers.2'],
    ramp: () => nn.Sequential(nn.Select(1, 0), nn.LayerNorm(48), nn.Linear(48, 10)),
    train,
    heldOut: test.images.shape[0],
    calibration: test.images.shape[0] / 2,
    labels: Array.from(test.labels.data() as BigInt64Array, Number),
    batch: (start, count) => test.images.narrow(0, start, count),
    batchNote: 'digits',
    one: (i) => test.images.narrow(0, i, 1),
    length: () => 1,
    epochs: 8,
  };
}

const argmaxRows = (logits: Tensor): number[] => Array.from(logits.argmax(1).data() as BigInt64Array, Number);

function elapsed<T>(run: () => T): [T, number] {
  const started = process.hrtime.bigint();
  const value = run();
  return [value, Number(process.hrtime.bigint() - started) / 1e6];
}

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

export interface TransformerResult {
  name: string;
  batchNote: string;
  form: string;
  rampsHeldOutAccuracy: number[];
  criterion: string;
  thresholds: Array<number | null>;
  /** On the calibration half: the final output's accuracy, the chosen exits', and the certified bound on the drop. */
  calibrationHalf: { finalAccuracy: number; accuracy: number; certifiedDrop: number; certified: boolean };
  one: { meanMs: number; fullMeanMs: number; speedup: number; accuracy: number; fullAccuracy: number; exitShares: number[] };
  batch32: Record<'full' | 'wholeBatch' | 'perSample', { meanMs: number; accuracy: number } | string>;
}

function runTask(task: Task, log: (line: string) => void): TransformerResult {
  torch.manualSeed(0);
  const { backbone, form } = task.load();
  const model = new EarlyExitModel(backbone, task.points.map((point) => [point, task.ramp()]));
  model.freezeBackbone();
  const started = Date.now();
  trainEarlyExit(model, task.train, { epochs: task.epochs, lossWeights: task.points.map(() => 0.3), batchSize: 32, lr: 0.02, seed: 0 });
  model.eval().optimizeForInference();
  const plain = jit.optimizeForInference(task.load().backbone.eval());
  log(`${task.name} (${form}): off-ramps trained on ${task.train.images.shape[0]} training samples, backbone frozen, ` +
    `${task.epochs} epochs, ${((Date.now() - started) / 1000).toFixed(0)} s`);

  // Calibration: the first half of the held-out samples; the report: the second half.
  const half = task.calibration;
  const calibrationSet = { images: task.batch(0, half), labels: torch.tensor(BigInt64Array.from(task.labels.slice(0, half), BigInt), { shape: [half] }) };
  const outputs = collectOutputs(model, calibrationSet, 100);
  // Costs at the calibration half's median length (for the digits every input is alike).
  const order = Array.from({ length: half }, (_, i) => i).sort((a, b) => task.length(a) - task.length(b));
  const typical = task.one(order[Math.floor(half / 2)]);
  const costs = measureExitLatencies(model, typical, 60, 10);
  const [, plainCost] = elapsed(() => { for (let i = 0; i < 60; i++) torch.noGrad(() => (plain.forward(typical) as Tensor).data()); });
  // Certified: a point estimate, even with the demo's 95% margin, picks the best of hundreds
  // of threshold sets and carries that half's luck into the report (1.8 points lost on the
  // text encoder where 0.5 were allowed).
  const calibration = calibrateThresholds(outputs, {
    criterion: 'entropy', exitCosts: costs, baselineCost: plainCost / 60, guarantee: { epsilon: 0.5, delta: 0.05 },
  });
  const policy = policyOf(calibration);

  // One at a time, the two sides paired request by request; the first pass warms up.
  const report = Array.from({ length: task.heldOut - half }, (_, i) => half + i);
  const one = { latency: [] as number[], full: [] as number[], correct: 0, fullCorrect: 0, taken: new Array(task.points.length + 1).fill(0) };
  const rampCorrect = new Array(task.points.length).fill(0);
  for (let pass = 0; pass < 2; pass++) {
    for (const i of report) {
      torch.tidy(() => torch.noGrad(() => {
        const x = task.one(i);
        const [result, ms] = elapsed(() => { const r = model.forwardEarlyExit(x, policy); r.output.data(); return r; });
        const [fullLogits, fullMs] = elapsed(() => { const out = plain.forward(x) as Tensor; out.data(); return out; });
        if (pass === 0) return;
        one.latency.push(ms);
        one.full.push(fullMs);
        one.taken[result.exit]++;
        if (argmaxRows(result.output)[0] === task.labels[i]) one.correct++;
        if (argmaxRows(fullLogits)[0] === task.labels[i]) one.fullCorrect++;
      }));
    }
  }
  // Each ramp's own accuracy on the report half, for the table.
  for (let start = half; start < task.heldOut; start += 100) {
    torch.tidy(() => torch.noGrad(() => {
      const count = Math.min(100, task.heldOut - start);
      const all = model.forward(task.batch(start, count));
      task.points.forEach((_, e) => argmaxRows(all[e]).forEach((p, j) => { if (p === task.labels[start + j]) rampCorrect[e]++; }));
    }));
  }

  // Batches of 32 in the held-out order: e-mails of mixed lengths, padded to each batch's longest.
  const size = 32;
  let perSampleRefused = '';
  try {
    torch.noGrad(() => model.forwardEarlyExit(task.batch(half, 2), { ...policy, perSample: true }));
  } catch (error) {
    perSampleRefused = (error as Error).message.split('\n')[0];
  }
  const perSampleOk = perSampleRefused === '';
  const runs: Array<['full' | 'wholeBatch' | 'perSample', (x: Tensor) => Tensor]> = [
    ['full', (x) => plain.forward(x) as Tensor],
    ['wholeBatch', (x) => model.forwardEarlyExit(x, policy).output],
  ];
  if (perSampleOk) runs.push(['perSample', (x) => model.forwardEarlyExit(x, { ...policy, perSample: true }).output]);
  const batched = Object.fromEntries(runs.map(([name]) => [name, { ms: [] as number[], correct: 0 }]));
  const count = Math.floor(report.length / size) * size;
  for (let pass = 0; pass < 2; pass++) {
    for (let start = half; start < half + count; start += size) {
      torch.tidy(() => torch.noGrad(() => {
        const x = task.batch(start, size);
        for (const [name, run] of runs) {
          const [output, ms] = elapsed(() => { const out = run(x); out.data(); return out; });
          if (pass === 0) continue;
          batched[name].ms.push(ms);
          argmaxRows(output).forEach((p, j) => { if (p === task.labels[start + j]) batched[name].correct++; });
        }
      }));
    }
  }
  const n = report.length;
  const batch32 = {
    full: { meanMs: mean(batched.full.ms), accuracy: (100 * batched.full.correct) / count },
    wholeBatch: { meanMs: mean(batched.wholeBatch.ms), accuracy: (100 * batched.wholeBatch.correct) / count },
    perSample: perSampleOk ? { meanMs: mean(batched.perSample.ms), accuracy: (100 * batched.perSample.correct) / count }
      : `refused: ${perSampleRefused}`,
  };
  return {
    name: task.name, batchNote: task.batchNote, form,
    rampsHeldOutAccuracy: rampCorrect.map((c) => (100 * c) / n),
    criterion: calibration.criterion, thresholds: calibration.chosen.thresholds,
    calibrationHalf: {
      finalAccuracy: calibration.finalAccuracy, accuracy: calibration.chosen.accuracy,
      certifiedDrop: calibration.guarantee!.bound, certified: calibration.guarantee!.certified,
    },
    one: {
      meanMs: mean(one.latency), fullMeanMs: mean(one.full), speedup: mean(one.full) / mean(one.latency),
      accuracy: (100 * one.correct) / n, fullAccuracy: (100 * one.fullCorrect) / n, exitShares: one.taken.map((t) => t / n),
    },
    batch32,
  };
}

/** Runs both tasks (or those named) and prints their tables. */
export function benchTransformers(only: string[] = ['spam', 'digits']): TransformerResult[] {
  const results: TransformerResult[] = [];
  const tasks: Record<string, () => Task> = { spam: spamTask, digits: digitsTask };
  const row = (cells: string[]) => console.log(cells[0].padEnd(52) + cells.slice(1).map((c) => ' ' + c.padStart(11)).join(''));
  const fuser = jit.tensorExprFuserEnabled();
  jit.setTensorExprFuserEnabled(false);
  console.log(`transformers: both sides compiled for inference, TorchScript's CPU fuser off (as serve runs them), ${torch.getNumThreads()} intra-op thread(s)`);
  try {
    benchEach(only, tasks, row, results);
  } finally {
    jit.setTensorExprFuserEnabled(fuser);
  }
  return results;
}

function benchEach(only: string[], tasks: Record<string, () => Task>, row: (cells: string[]) => void, results: TransformerResult[]): void {
  for (const key of only) {
    const r = runTask(tasks[key](), (line) => console.log(line));
    results.push(r);
    const thresholds = r.thresholds.map((t) => (t === null ? 'off' : t.toFixed(4))).join(', ');
    console.log(`  held-out report half: ${r.rampsHeldOutAccuracy.length} off-ramps alone ${r.rampsHeldOutAccuracy.map((a) => a.toFixed(2) + '%').join(', ')}; ` +
      `${r.criterion} thresholds [${thresholds}] from the calibration half`);
    const c = r.calibrationHalf;
    console.log(`  calibration half: full network ${c.finalAccuracy.toFixed(2)}%, early exits ${c.accuracy.toFixed(2)}%; ` +
      (c.certified ? `certified: at most ${c.certifiedDrop.toFixed(2)} points lost on new data, with probability 0.95`
        : 'nothing certified: every exit off'));
    row(['', 'ms', 'vs full', 'accuracy']);
    row([`  one at a time, full network`, r.one.fullMeanMs.toFixed(3), '1.00x', `${r.one.fullAccuracy.toFixed(2)}%`]);
    row([`  one at a time, early exits`, r.one.meanMs.toFixed(3), `${r.one.speedup.toFixed(2)}x`, `${r.one.accuracy.toFixed(2)}%`]);
    console.log(`    left at each exit: ${r.one.exitShares.map((s, e) => `${e < r.one.exitShares.length - 1 ? `exit ${e}` : 'final'} ${(100 * s).toFixed(1)}%`).join(', ')}`);
    const full = r.batch32.full as { meanMs: number; accuracy: number };
    for (const [name, label] of [['full', 'full network'], ['wholeBatch', 'early exits, whole batch'], ['perSample', 'early exits, per sample']] as const) {
      const b = r.batch32[name];
      if (typeof b === 'string') console.log(`  batch 32, ${label}: ${b}`);
      else row([`  batch 32 (${r.batchNote}), ${label}`, b.meanMs.toFixed(3), `${(full.meanMs / b.meanMs).toFixed(2)}x`, `${b.accuracy.toFixed(2)}%`]);
    }
  }
}
