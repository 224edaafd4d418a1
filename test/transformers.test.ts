/**
 * Early exits on a transformer: the BERT-style text encoder that scripts/make_transformer_fixtures.py
 * trains on the SpamAssassin training split, as TorchScript and as an exported program,
 * against eager PyTorch's forward hooks.
 */
import { EarlyExitModel, EarlyExitServer, ScriptModule, createHttpApp, Tensor, WordTokenizer, earlyExitLoss, emailLabels, exitDecisions, exitScores, jit, loadMnist, loadSpamAssassin, nn, optim, splitEmails, torch } from '../lib';
import { AddressInfo } from 'net';
import { CAN_EXPORT, fixture, fromRef, maxAbsDiff, python, reference } from './helpers';

const describeExported = CAN_EXPORT ? describe : describe.skip;
const ref = () => reference('text_encoder_reference.json');
const LAYERS = ['encoder.layers.0', 'encoder.layers.1', 'encoder.layers.2', 'encoder.layers.3'];

/** DeeBERT's off-ramp: the [CLS] token, a pooler (Linear, Tanh) and a classifier. */
const offRamp = () => nn.Sequential(nn.Select(1, 0), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2));

/** Every point's output, and the model's, against the forward hooks Python recorded in `recorded`. */
function hooksEqualPython(backbone: ScriptModule, points: string[], recorded: any): void {
  const model = new EarlyExitModel(backbone, points.map((point) => [point, nn.Identity()])).eval();
  const outputs = torch.noGrad(() => model.forward(fromRef(recorded.input)));
  points.forEach((point, i) => expect([point, maxAbsDiff(outputs[i], recorded.hooks[point]) <= 1e-5]).toEqual([point, true]));
  expect(maxAbsDiff(outputs[points.length], recorded.output)).toBeLessThanOrEqual(1e-5);
}

/** Thresholds that send some samples out at each exit, and the decisions they give. */
function spreadPolicy(outputs: Tensor[]): { thresholds: number[]; expected: number[] } {
  const scores = exitScores(outputs, 'entropy');
  const thresholds = scores.slice(0, -1).map((s) => [...s].sort((a, b) => a - b)[1] + 1e-6);
  return { thresholds, expected: exitDecisions(scores, 'entropy', thresholds) };
}

/**
 * Per-sample exits on `x` with thresholds that spread the samples over at least `distinct`
 * exits: the exits taken are the ones the full outputs decide, and every sample's output
 * equals that sample run alone (`alone(i)` is its input then): through the model itself, or
 * in inference mode through the compiled model, whose exits it then takes alone too.
 * Returns the full outputs.
 */
function perSampleEqualsAlone(model: EarlyExitModel, x: Tensor, distinct: number, alone: (i: number) => Tensor): Tensor[] {
  const outputs = torch.noGrad(() => model.forward(x));
  const { thresholds, expected } = spreadPolicy(outputs);
  expect(new Set(expected).size).toBeGreaterThanOrEqual(distinct);
  const policy = { criterion: 'entropy' as const, thresholds, perSample: true };
  const result = model.forwardEarlyExit(x, policy);
  expect(result.exits).toEqual(expected);
  expected.forEach((exit, i) => {
    let own: Tensor;
    if (model.inferenceMode) {
      const compiled = model.forwardEarlyExit(alone(i), policy);
      expect([i, compiled.exit]).toEqual([i, exit]);
      own = compiled.output;
    } else {
      own = torch.noGrad(() => model.forward(alone(i)))[exit];
    }
    expect([i, maxAbsDiff(result.output.narrow(0, i, 1), own) <= 1e-5]).toEqual([i, true]);
  });
  return outputs;
}

/**
 * Two optimizer steps each way the papers train exits, against PyTorch's: jointly with
 * Distiller's weighted loss, and DeeBERT's second stage (backbone frozen, off-ramps trained
 * on the sum of their losses).
 */
function trainsAsPyTorch(backbone: ScriptModule, scheme: 'joint' | 'two_stage'): void {
  const t = ref().training;
  const ramps = (t.ramps as Array<Record<string, any>>).map((state) => {
    const ramp = offRamp();
    ramp.loadStateDict(Object.fromEntries(Object.entries(state).map(([key, value]) => [key, fromRef(value)])));
    return ramp;
  });
  const model = new EarlyExitModel(backbone, (t.points as string[]).map((point, i) => [point, ramps[i]]));
  const before = backbone.stateDict()['classifier.weight'].clone();
  if (scheme === 'two_stage') model.freezeBackbone();
  model.train();
  const { lr, momentum, weightDecay, lossWeights, seed } = t.settings;
  const optimizer = new optim.SGD(scheme === 'joint' ? model.parameters() : ramps.flatMap((ramp) => ramp.parameters()), { lr, momentum, weightDecay });
  const x = fromRef(t.input);
  const y = fromRef(t.target);
  torch.manualSeed(seed);
  for (let step = 0; step < 2; step++) {
    const outputs = model.forward(x);
    const loss = scheme === 'joint'
      ? earlyExitLoss(outputs, y, lossWeights)
      : outputs.slice(0, 3).map((output) => nn.functional.crossEntropy(output, y)).reduce((a, b) => a.add(b));
    optimizer.zeroGrad();
    loss.backward();
    optimizer.step();
    expect(loss.item()).toBeCloseTo(t[scheme].losses[step], 5);
  }
  const state = model.backbone.stateDict();
  for (const [name, expected] of Object.entries<any>(t[scheme].after)) {
    // "tokens.weight[:64]": the embedding's first rows.
    const [key, rows] = name.endsWith('[:64]') ? [name.slice(0, -5), 64] : [name, 0];
    const value = rows > 0 ? state[key].narrow(0, 0, rows) : state[key];
    expect([name, maxAbsDiff(value, expected) <= 1e-5]).toEqual([name, true]);
  }
  ramps.forEach((ramp, i) => {
    const after = ramp.stateDict();
    for (const [name, expected] of Object.entries<any>(t[scheme].ramps_after[i])) {
      expect([i, name, maxAbsDiff(after[name], expected) <= 1e-5]).toEqual([i, name, true]);
    }
  });
  // The frozen backbone did not move at all; trained jointly, it did.
  const moved = maxAbsDiff(state['classifier.weight'], before);
  if (scheme === 'two_stage') expect(moved).toBe(0);
  else expect(moved).toBeGreaterThan(0);
}

/** Compiled by optimizeForInference, every exit stops with the uncompiled output, at two batch shapes. */
function compiledEqualsUncompiled(backbone: ScriptModule): void {
  torch.manualSeed(0);
  const model = new EarlyExitModel(backbone, [['encoder.layers.0', offRamp()], ['encoder.layers.2', offRamp()]]).eval();
  const full = fromRef(ref().input);
  const shapes = [full, full.narrow(0, 1, 2).narrow(1, 0, 20)];
  const expected = shapes.map((x) => torch.noGrad(() => model.forward(x)));
  model.optimizeForInference();
  shapes.forEach((x, s) => [[null, null], [100, null], [null, 100]].forEach((thresholds, k) => {
    const output = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds }).output;
    expect([s, k, maxAbsDiff(output, expected[s][k === 0 ? 2 : k - 1]) <= 1e-5]).toEqual([s, k, true]);
  }));
}

describe('the text encoder (TorchScript)', () => {
  it('was trained in Python to tell spam from ham on e-mails it never saw', () => {
    expect(ref().held_out_accuracy).toBeGreaterThan(0.9);
    const tokenizer = WordTokenizer.load(fixture('spam_tokenizer.json'));
    expect(tokenizer.maxLength).toBe(64);
    // The reference batch is the tokenizer's encoding of the first held-out e-mails, of mixed lengths.
    const { test } = splitEmails(loadSpamAssassin());
    const { inputIds } = tokenizer.encodeBatch(test.slice(0, 6).map((e) => e.text));
    expect(inputIds.toArray()).toEqual(fromRef(ref().input).toArray());
    expect(new Set(ref().lengths).size).toBeGreaterThan(1);
  });

  it('has its modules, and every layer\'s output equals Python\'s forward hooks', () => {
    const backbone = jit.load(fixture('text_encoder_scripted.pt'));
    expect(backbone.namedModules().map(([name]) => name)).toEqual((ref().named_modules as Array<[string, string]>).map(([name]) => name));
    hooksEqualPython(backbone, LAYERS, ref());
  });

  it.each(['joint', 'two_stage'] as const)("two training steps with DeeBERT's off-ramps (%s) equal PyTorch's", (scheme) => {
    trainsAsPyTorch(jit.load(fixture('text_encoder_scripted.pt')), scheme);
  });

  it("PABEE's criterion: patience exits where PABEE's own rule does, sample by sample", () => {
    torch.manualSeed(0);
    const ramps = [offRamp(), offRamp(), offRamp()];
    const model = new EarlyExitModel(jit.load(fixture('text_encoder_scripted.pt')), LAYERS.slice(0, 3).map((point, i) => [point, ramps[i]]))
      .freezeBackbone().train();
    // DeeBERT's second stage, briefly, on training e-mails: ramps that mostly agree.
    const tokenizer = WordTokenizer.load(fixture('spam_tokenizer.json'));
    const { train, test } = splitEmails(loadSpamAssassin());
    const optimizer = new optim.SGD(ramps.flatMap((ramp) => ramp.parameters()), { lr: 0.05, momentum: 0.9 });
    for (let step = 0; step < 16; step++) {
      const batch = train.slice(16 * step, 16 * step + 16);
      const outputs = model.forward(tokenizer.encodeBatch(batch.map((e) => e.text)).inputIds);
      const loss = outputs.slice(0, 3).map((output) => nn.functional.crossEntropy(output, emailLabels(batch))).reduce((a, b) => a.add(b));
      optimizer.zeroGrad();
      loss.backward();
      optimizer.step();
    }
    model.eval();
    const x = tokenizer.encodeBatch(test.slice(0, 48).map((e) => e.text)).inputIds;
    const outputs = torch.noGrad(() => model.forward(x));
    // PABEE's inference loop (Zhou et al. 2020, modeling_pabee_albert.py), one sample at a time:
    // the counter grows while a layer's prediction equals the previous layer's, and the sample
    // leaves at the layer where it reaches the patience.
    const pabee = JSON.parse(python(`
import json
outputs = json.loads('${JSON.stringify(outputs.map((o) => o.toArray()))}')
def argmax(logits):
    return logits.index(max(logits))
def pabee(layers, patience):
    counter, previous = 0, None
    for i, logits in enumerate(layers):
        if previous is not None and argmax(logits) == argmax(previous):
            counter += 1
        else:
            counter = 0
        previous = logits
        if counter == patience:
            return i
    return len(layers) - 1
samples = len(outputs[0])
print(json.dumps([[pabee([layer[j] for layer in outputs], patience) for j in range(samples)] for patience in range(3)]))
`)) as number[][];
    const scores = exitScores(outputs, 'patience');
    pabee.forEach((expected, patience) => {
      // The library counts agreeing outputs, PABEE counts agreements after the first: patience p is threshold p + 1.
      const thresholds = [patience + 1, patience + 1, patience + 1];
      expect([patience, exitDecisions(scores, 'patience', thresholds)]).toEqual([patience, expected]);
      const served = expected.map((_, j) => model.forwardEarlyExit(x.narrow(0, j, 1), { criterion: 'patience', thresholds }).exit);
      expect([patience, served]).toEqual([patience, expected]);
    });
    expect(new Set(pabee[1]).size).toBeGreaterThanOrEqual(2);
    expect(pabee[0].every((exit) => exit === 0)).toBe(true);
  });

  it('compiled by optimizeForInference, exits stop with the uncompiled outputs at any batch and length', () => {
    compiledEqualsUncompiled(jit.load(fixture('text_encoder_scripted.pt')));
  });

  it('stops at an exit after any layer; per-sample across the padding mask: refused uncompiled, naming the way; compiled, each sample as alone', () => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(jit.load(fixture('text_encoder_scripted.pt')), LAYERS.slice(0, 3).map((point) => [point, offRamp()])).eval();
    const x = fromRef(ref().input);
    const outputs = torch.noGrad(() => model.forward(x));
    for (let exit = 0; exit < 3; exit++) {
      const result = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [0, 1, 2].map((i) => (i === exit ? 100 : null)) });
      expect(result.exit).toBe(exit);
      expect(maxAbsDiff(result.output, outputs[exit])).toBe(0);
    }
    // The mask is made from the ids before the first layer and read by every layer after it.
    expect(model.exitsPerSample).toEqual([false, false, false]);
    let refusal = '';
    try {
      model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [1, null, null], perSample: true });
    } catch (error) {
      refusal = (error as Error).message;
    }
    expect(refusal).toMatch(/^forwardEarlyExit: samples cannot leave the batch alone at exit 'encoder\.layers\.0'/);
    // The refusal names the way that works: compiled, the mask goes on with the samples that stay.
    expect(refusal).toContain('(compiled, it can: optimizeForInference() carries every batch-sized value read after the exit along with the samples that stay)');
    for (const optimize of [false, undefined]) { // frozen, and oneDNN where this build allows it
      model.optimizeForInference({ optimize });
      expect(model.inferenceExitsPerSample).toEqual([true, true, true]);
      const lengths: number[] = ref().lengths;
      // Mixed lengths in one batch; alone, each sample goes without the padding the batch gave it.
      perSampleEqualsAlone(model, x, 3, (i) => x.narrow(0, i, 1).narrow(1, 0, lengths[i]));
    }
  });
});

describeExported('the text encoder exported by torch.export (dynamic batch and length)', () => {
  const load = () => torch.export.load(fixture('text_encoder_exported.pt2'));

  it('has its modules, and every layer\'s output equals Python\'s forward hooks', () => {
    const backbone = load();
    const ours = backbone.namedModules().map(([name]) => name);
    for (const point of [...LAYERS, 'encoder.layers.2.attention', 'pooler', 'classifier']) expect(ours).toContain(point);
    hooksEqualPython(backbone, LAYERS, ref());
  });

  it.each(['joint', 'two_stage'] as const)("two training steps with DeeBERT's off-ramps (%s) equal PyTorch's", (scheme) => {
    trainsAsPyTorch(load(), scheme);
  });

  it('compiled by optimizeForInference, exits stop with the uncompiled outputs at any batch and length', () => {
    compiledEqualsUncompiled(load());
  });

  it('per-sample exits across the padding mask, mixed lengths in one batch, equal each sample run alone, interpreted and compiled', () => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(load(), LAYERS.slice(0, 3).map((point) => [point, offRamp()])).eval();
    // Every live value that carries the batch (the residual stream, the mask, the batch size) shrinks.
    expect(model.exitsPerSample).toEqual([true, true, true]);
    const x = fromRef(ref().input);
    const lengths: number[] = ref().lengths;
    // Alone, each sample goes without the padding the batch gave it.
    const outputs = perSampleEqualsAlone(model, x, 3, (i) => x.narrow(0, i, 1).narrow(1, 0, lengths[i]));
    // Patience per sample: the streaks shrink with the batch too.
    const patience = { criterion: 'patience' as const, thresholds: [2, 2, 2], perSample: true };
    expect(model.forwardEarlyExit(x, patience).exits).toEqual(exitDecisions(exitScores(outputs, 'patience'), 'patience', [2, 2, 2]));
    // Compiled, the graph carries the mask past each exit: the same, each sample as alone.
    model.optimizeForInference();
    expect(model.inferenceExitsPerSample).toEqual([true, true, true]);
    perSampleEqualsAlone(model, x, 3, (i) => x.narrow(0, i, 1).narrow(1, 0, lengths[i]));
    expect(model.forwardEarlyExit(x, patience).exits).toEqual(exitDecisions(exitScores(outputs, 'patience'), 'patience', [2, 2, 2]));
  });
});

describe('the text encoder served by EarlyExitServer (token ids of mixed lengths, padded into batches)', () => {
  const tokenizer = () => WordTokenizer.load(fixture('spam_tokenizer.json'));
  const emails = () => splitEmails(loadSpamAssassin()).test.slice(0, 12).map((email) => email.text);
  const sequence = () => ({ maxLength: 64, padId: WordTokenizer.PAD, vocabularySize: tokenizer().size });

  /**
   * Twelve e-mails of mixed lengths served per sample in one padded batch: each answer (exit
   * and output) equals the e-mail run alone. Returns the server, still open, and what it said.
   */
  async function servedAsAlone(model: EarlyExitModel) {
    const ids = emails().map((text) => tokenizer().encode(text));
    const lengths = new Set(ids.map((sequenceIds) => sequenceIds.length));
    expect(lengths.size).toBeGreaterThan(1);
    const { thresholds } = spreadPolicy(torch.noGrad(() => model.forward(tokenizer().encodeBatch(emails()).inputIds)));
    const policy = { criterion: 'entropy' as const, thresholds };
    // One batch of all twelve, padded to the longest.
    const server = new EarlyExitServer(model, { sequence: sequence(), policy, maxBatchSize: 12, maxQueueDelayMs: 60000, instances: 1 });
    const answers = await Promise.all(ids.map((sequenceIds) => server.infer(sequenceIds)));
    expect(server.stats()).toMatchObject({ batches: 1, meanBatchSize: 12, answered: 12 });
    expect(new Set(answers.map((a) => a.exit)).size).toBeGreaterThan(1);
    ids.forEach((sequenceIds, i) => {
      const alone = model.forwardEarlyExit(torch.tensor(BigInt64Array.from(sequenceIds, BigInt), { shape: [1, sequenceIds.length] }), { ...policy, perSample: true });
      expect([i, answers[i].exit]).toEqual([i, alone.exit]);
      const output = alone.output.data() as Float32Array;
      expect([i, Math.max(...Array.from(output, (v, k) => Math.abs(v - answers[i].output[k]))) <= 1e-5]).toEqual([i, true]);
    });
    return { server, ids, policy, answers };
  }

  (CAN_EXPORT ? it : it.skip)('exported: each e-mail is answered, per sample and released early, as it is alone, in process and over HTTP', async () => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(torch.export.load(fixture('text_encoder_exported.pt2')), LAYERS.slice(0, 3).map((point) => [point, offRamp()])).eval();
    const { server, ids, policy, answers } = await servedAsAlone(model);
    // A bad request fails alone, at once: the batch it would have joined is not lost.
    await expect(server.infer([2, 99999])).rejects.toThrow(/token id 99999 at position 1 is outside the vocabulary \(0 to \d+\)/);
    await expect(server.infer(new Array(65).fill(5))).rejects.toThrow(/the input has 65 ids; this model takes 1 to 64/);
    await expect(server.infer([])).rejects.toThrow(/the input has 0 ids/);
    await expect(server.infer([2, 1.5])).rejects.toThrow(/token id 1 is 1\.5; ids are integers/);
    await expect(server.infer(new Float32Array(3))).rejects.toThrow(/the input must be token ids/);
    await expect(server.infer(torch.zeros([1, 5]))).rejects.toThrow(/dtype float32; token ids are int64/);
    await server.close();

    // Over HTTP on loopback: ids as JSON, /predict and the Open Inference Protocol (INT64).
    const served = new EarlyExitServer(model, { sequence: sequence(), policy, maxBatchSize: 12, maxQueueDelayMs: 5, instances: 1 });
    const app = createHttpApp(served, { modelName: 'spam' });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const post = (route: string, body: unknown) => fetch(base + route, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    try {
      const metadata = await (await fetch(`${base}/v2/models/spam`)).json() as { inputs: Array<{ datatype: string; shape: number[] }> };
      expect(metadata.inputs[0]).toMatchObject({ datatype: 'INT64', shape: [-1, -1] });
      const replies = await Promise.all(ids.map((sequenceIds) => post('/predict', { input: sequenceIds })));
      for (const [i, reply] of replies.entries()) {
        expect(reply.status).toBe(200);
        expect(((await reply.json()) as { exit: number }).exit).toBe(answers[i].exit);
      }
      const v2 = await post('/v2/models/spam/infer', { inputs: [{ name: 'input', shape: [1, ids[3].length], datatype: 'INT64', data: ids[3] }] });
      expect(v2.status).toBe(200);
      const outputs = ((await v2.json()) as { outputs: Array<{ data: number[] }> }).outputs;
      expect(outputs[1].data).toEqual([answers[3].exit]);
      outputs[0].data.forEach((v, k) => expect(Math.abs(v - answers[3].output[k])).toBeLessThanOrEqual(1e-5));
      // Bad requests: 400 with the reason, and the server keeps serving.
      const floats = await post('/v2/models/spam/infer', { inputs: [{ name: 'input', shape: [2], datatype: 'FP32', data: [2, 5] }] });
      expect(floats.status).toBe(400);
      expect(((await floats.json()) as { error: string }).error).toMatch(/datatype FP32; this model takes INT64/);
      const fraction = await post('/predict', { input: [2, 5.5] });
      expect(fraction.status).toBe(400);
      expect(((await fraction.json()) as { error: string }).error).toMatch(/value 1 is 5\.5, not a token id/);
      const outside = await post('/predict', { input: [2, 99999] });
      expect(outside.status).toBe(400);
      expect(((await outside.json()) as { error: string }).error).toMatch(/outside the vocabulary/);
      const raw = await fetch(`${base}/predict`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: Buffer.alloc(16) });
      expect(raw.status).toBe(415);
      expect((await post('/predict', { input: ids[0] })).status).toBe(200);
    } finally {
      await app.close();
      await served.close();
    }
  });

  it('TorchScript: per-sample exits refused uncompiled when the server is made, naming the way; compiled, each e-mail as alone; whole-batch exits served', async () => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(jit.load(fixture('text_encoder_scripted.pt')), LAYERS.slice(0, 3).map((point) => [point, offRamp()])).eval();
    const padded = tokenizer().encodeBatch(emails().slice(0, 4)).inputIds;
    // Every e-mail of the four is sure enough at exit 1, so the batch leaves there.
    const sure = Math.max(...exitScores(torch.noGrad(() => model.forward(padded)), 'entropy')[1]) + 1e-6;
    const policy = { criterion: 'entropy' as const, thresholds: [null, sure, null] };
    expect(() => new EarlyExitServer(model, { sequence: sequence(), policy: { ...policy, thresholds: [sure, sure, null] } }))
      .toThrow(/samples cannot leave the batch alone at exit 'encoder\.layers\.0': .*\(compiled, it can: optimizeForInference\(\)/);
    // Compiled, the padding mask goes on with the e-mails that stay.
    model.optimizeForInference();
    await (await servedAsAlone(model)).server.close();
    model.leaveInferenceMode();
    expect(() => new EarlyExitServer(model, { sequence: sequence(), inputShape: [3], policy })).toThrow(/either inputShape .* or sequence/);
    const server = new EarlyExitServer(model, { sequence: sequence(), policy, perSample: false, maxBatchSize: 4, maxQueueDelayMs: 60000, instances: 1 });
    const ids = emails().slice(0, 4).map((text) => tokenizer().encode(text));
    const answers = await Promise.all(ids.map((sequenceIds) => server.infer(BigInt64Array.from(sequenceIds, BigInt))));
    // The whole batch leaves together: every e-mail at the same exit, with its row of the padded batch.
    const batch = model.forwardEarlyExit(padded, policy);
    expect(batch.exit).toBe(1);
    answers.forEach((answer, i) => {
      expect(answer.exit).toBe(1);
      const row = batch.output.narrow(0, i, 1).data() as Float32Array;
      expect(Math.max(...Array.from(row, (v, k) => Math.abs(v - answer.output[k])))).toBeLessThanOrEqual(1e-5);
    });
    await server.close();
  });
});

describe('the vision transformer on the digits (TorchScript, and exported where torch.export is)', () => {
  const vit = () => reference('vit_reference.json');
  const POINTS = ['layers.0', 'layers.1', 'layers.2', 'layers.3'];
  const head = () => nn.Sequential(nn.Select(1, 0), nn.LayerNorm(48), nn.Linear(48, 10));
  const backbones: Array<[string, () => ScriptModule]> = [['TorchScript', () => jit.load(fixture('vit_scripted.pt'))]];
  if (CAN_EXPORT) backbones.push(['exported', () => torch.export.load(fixture('vit_exported.pt2'))]);

  it("was trained in Python on the training digits of Node's split, and held out the same digits", () => {
    expect(vit().held_out_accuracy).toBeGreaterThan(0.85);
    const { test } = loadMnist({ train: 8000, test: 2000, seed: 0 });
    expect(test.images.narrow(0, 0, 6).toArray()).toEqual(fromRef(vit().input).toArray());
  });

  it.each(backbones)('%s: every layer\'s output equals Python\'s forward hooks', (_kind, load) => {
    hooksEqualPython(load(), POINTS, vit());
  });

  it.each(backbones)('%s: per-sample exits after the layers equal each sample run alone', (_kind, load) => {
    torch.manualSeed(0);
    const model = new EarlyExitModel(load(), POINTS.slice(0, 3).map((point) => [point, head()])).eval();
    // Nothing batch-sized but the residual stream lives from one layer to the next.
    expect(model.exitsPerSample).toEqual([true, true, true]);
    const x = fromRef(vit().input);
    perSampleEqualsAlone(model, x, 2, (i) => x.narrow(0, i, 1));
  });
});
