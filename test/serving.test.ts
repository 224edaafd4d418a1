/**
 * Serving under load: early release from inside a running forward, the server's answers
 * against `forwardEarlyExit` on each input alone, and the HTTP layer with a real client
 * (fetch) against a real server on loopback.
 */
import { AddressInfo } from 'net';
import { EarlyExitModel, Tensor, exitScores, jit, nn, torch } from '../lib';
import { EarlyExitServer } from '../lib/serving/server';
import { createHttpApp } from '../lib/serving/http';
import { ServerClosedError } from '../lib/serving/errors';
import { CAN_EXPORT, fixture, medianEntropySplit, mnistTwoExits, startServe } from './helpers';

/** ResNet-18 at 64 px with an exit after layer1 that half of a seeded batch meets, compiled for inference. */
function resnetWithEarlyExit(): { model: EarlyExitModel; x: Tensor; threshold: number } {
  torch.manualSeed(0);
  const model = new EarlyExitModel(jit.load(fixture('resnet18_scripted.pt')),
    [['layer1', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))]]).eval();
  torch.manualSeed(1);
  const x = torch.randn([8, 3, 64, 64]);
  const [scores] = exitScores(torch.noGrad(() => model.forward(x)), 'entropy');
  // Between the fourth and fifth scores: batches of other sizes give a sample's score within
  // 1e-5 of it alone, not bit for bit, so a threshold on a score could fall either side of it.
  const sorted = [...scores].sort((a, b) => a - b);
  const threshold = (sorted[3] + sorted[4]) / 2;
  model.optimizeForInference();
  return { model, x, threshold };
}

describe('early release', () => {
  it('hands each leaving sample to JS while the forward goes on, before the call resolves', async () => {
    const { model, x, threshold } = resnetWithEarlyExit();
    const policy = { criterion: 'entropy' as const, thresholds: [threshold], perSample: true };
    const expected = model.forwardEarlyExit(x, policy);
    const released: Array<{ exit: number; positions: number[]; rows: number[]; at: bigint }> = [];
    const result = await model.forwardEarlyExitAsync(x, policy, {
      onSampleExit: (exit, positions, outputs) => {
        released.push({ exit, positions, rows: Array.from(outputs.data() as Float32Array), at: process.hrtime.bigint() });
        outputs.dispose();
      },
    });
    const resolvedAt = process.hrtime.bigint();
    const leaving = expected.exits.flatMap((e, i) => (e === 0 ? [i] : []));
    expect(leaving.length).toBeGreaterThan(0);
    expect(leaving.length).toBeLessThan(8);
    expect(released).toHaveLength(1);
    expect(released[0].exit).toBe(0);
    expect(released[0].positions).toEqual(leaving);
    expect(released[0].at).toBeLessThan(resolvedAt);
    // The released rows are the exit's rows of the full result.
    const all = Array.from(result.output.data() as Float32Array);
    leaving.forEach((position, j) => {
      const row = all.slice(position * 10, position * 10 + 10);
      released[0].rows.slice(j * 10, j * 10 + 10).forEach((v, k) => expect(Math.abs(v - row[k])).toBeLessThanOrEqual(1e-6));
    });
    expect(result.exits).toEqual(expected.exits);
  });

  it('a callback that throws rejects the call with its error', async () => {
    const model = mnistTwoExits();
    const { x, thresholds } = medianEntropySplit(model);
    await expect(model.forwardEarlyExitAsync(x, { criterion: 'entropy', thresholds, perSample: true }, {
      onSampleExit: () => { throw new Error('release handler failed'); },
    })).rejects.toThrow('release handler failed');
    await expect(model.forwardEarlyExitAsync(x, { criterion: 'entropy', thresholds }, { onSampleExit: 5 as never }))
      .rejects.toThrow(/onSampleExit must be a function/);
  });
});

describe('EarlyExitServer', () => {
  it('answers concurrent requests as forwardEarlyExit answers each input alone, releasing early exits first', async () => {
    const { model, x, threshold } = resnetWithEarlyExit();
    const policy = { criterion: 'entropy' as const, thresholds: [threshold] };
    // One batch of all eight: it starts when the eighth arrives, however slowly the machine submits them.
    const server = new EarlyExitServer(model, { inputShape: [3, 64, 64], policy, maxBatchSize: 8, maxQueueDelayMs: 60000, instances: 1 });
    const inputs = Array.from({ length: 8 }, (_, i) => x.narrow(0, i, 1));
    // One intra-op thread, as a server runs each instance (serve sets it): with every core
    // computing, the main thread that hands out the early answers would wait for a slot.
    const threads = torch.getNumThreads();
    torch.setNumThreads(1);
    const order: number[] = [];
    const answers = await Promise.all(inputs.map((input, i) => server.infer(input).then((answer) => { order.push(i); return answer; })));
    inputs.forEach((input, i) => {
      const alone = model.forwardEarlyExit(input, { ...policy, perSample: true });
      expect(answers[i].exit).toBe(alone.exit);
      Array.from(alone.output.data() as Float32Array).forEach((v, k) => expect(Math.abs(v - answers[i].output[k])).toBeLessThanOrEqual(1e-5));
    });
    const early = answers.flatMap((a, i) => (a.exit === 0 ? [i] : []));
    expect(early.length).toBeGreaterThan(0);
    expect(early.length).toBeLessThan(8);
    // Every sample that left at the exit was answered before any that went to the end.
    expect(order.slice(0, early.length).sort()).toEqual(early);
    const stats = server.stats();
    expect(stats).toMatchObject({ requests: 8, answered: 8, failed: 0, batches: 1, meanBatchSize: 8 });
    expect(stats.exitShares[0]).toBeCloseTo(early.length / 8, 10);
    // Released at the exit, not when the batch ended: layers 2-4 of the rest of the batch
    // (5-13 ms here) are not in an early answer's time, where answers given when the call
    // ends would all come within a fraction of a millisecond. The median of five batches,
    // so that one pause of this process (a garbage collection) cannot decide it.
    const gaps: number[] = [];
    for (let round = 0; round < 5; round++) {
      const again = round === 0 ? answers : await Promise.all(inputs.map((input) => server.infer(input)));
      const lastEarly = Math.max(...again.filter((a) => a.exit === 0).map((a) => a.computeMs));
      const firstLate = Math.min(...again.filter((a) => a.exit === 1).map((a) => a.computeMs));
      gaps.push(firstLate - lastEarly);
    }
    torch.setNumThreads(threads);
    expect(gaps.every((gap) => gap > 0)).toBe(true);
    expect([...gaps].sort((a, b) => a - b)[2]).toBeGreaterThan(1);
    await server.close();
  });

  it('refuses bad inputs at once, and what is queued when closed', async () => {
    const model = mnistTwoExits();
    const { thresholds } = medianEntropySplit(model);
    const server = new EarlyExitServer(model, { inputShape: [1, 28, 28], policy: { criterion: 'entropy', thresholds }, maxQueueDelayMs: 10000, instances: 1 });
    await expect(server.infer(torch.zeros([2, 28, 28]))).rejects.toThrow(/shape \[2,28,28\]; expected \[1,28,28\]/);
    await expect(server.infer(new Float32Array(5))).rejects.toThrow(/5 values; one sample of \[1,28,28\].* has 784/);
    await expect(server.infer(torch.zeros([1, 28, 28], { dtype: 'float64' }))).rejects.toThrow(/dtype float64; expected float32/);
    await expect(server.infer(new Float32Array(784).fill(NaN))).rejects.toThrow(/non-finite value \(NaN\) at flat position 0/);
    const queued = server.infer(new Float32Array(784));
    await server.close();
    await expect(queued).rejects.toBeInstanceOf(ServerClosedError);
    expect(() => new EarlyExitServer(model, { inputShape: [1, 28, 28], policy: { criterion: 'entropy', thresholds: [0.1] } }))
      .toThrow(/one threshold per exit: 2 exit\(s\), 1 threshold/);
  });
});

describe('HTTP', () => {
  const model = mnistTwoExits();
  const { x, thresholds } = medianEntropySplit(model);
  const policy = { criterion: 'entropy' as const, thresholds };
  let server: EarlyExitServer;
  let app: ReturnType<typeof createHttpApp>;
  let base = '';

  beforeAll(async () => {
    server = new EarlyExitServer(model, { inputShape: [1, 28, 28], policy, maxBatchSize: 16, maxQueueDelayMs: 5, instances: 2 });
    app = createHttpApp(server, { modelName: 'mnist' });
    await app.listen({ port: 0, host: '127.0.0.1' });
    base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await app.close();
    await server.close();
  });

  const post = (path: string, body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
    fetch(base + path, { method: 'POST', headers, body: body instanceof Buffer ? body : JSON.stringify(body) });
  const sample = (i: number) => Array.from(x.narrow(0, i, 1).data() as Float32Array);
  const alone = (i: number) => model.forwardEarlyExit(x.narrow(0, i, 1), { ...policy, perSample: true });

  it('answers concurrent JSON, float32 and Open Inference Protocol requests as each input alone', async () => {
    const replies = await Promise.all(Array.from({ length: 16 }, (_, i) => post('/predict', { input: sample(i), shape: [1, 28, 28] })));
    for (const [i, reply] of replies.entries()) {
      expect(reply.status).toBe(200);
      const body = await reply.json() as { prediction: number; probabilities: number[]; exit: number; latencyMs: number };
      const reference = alone(i);
      expect(body.exit).toBe(reference.exit);
      const logits = Array.from(reference.output.data() as Float32Array);
      expect(body.prediction).toBe(logits.indexOf(Math.max(...logits)));
      expect(body.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      expect(body.latencyMs).toBeGreaterThan(0);
    }
    const raw = await post('/predict', Buffer.from(Float32Array.from(sample(3)).buffer), { 'content-type': 'application/octet-stream', 'x-input-shape': '1,1,28,28' });
    expect(raw.status).toBe(200);
    expect(((await raw.json()) as { exit: number }).exit).toBe(alone(3).exit);
    const v2 = await post('/v2/models/mnist/infer', { id: 'r1', inputs: [{ name: 'input', shape: [3, 1, 28, 28], datatype: 'FP32', data: [...sample(0), ...sample(1), ...sample(2)] }] });
    expect(v2.status).toBe(200);
    const body = await v2.json() as { id: string; outputs: Array<{ name: string; shape: number[]; data: number[] }>; parameters?: unknown };
    expect(body.id).toBe('r1');
    expect(body.outputs[0].shape).toEqual([3, 10]);
    expect(body.outputs[1].data).toEqual([0, 1, 2].map((i) => alone(i).exit));
    // Parameters hold strings, numbers and booleans only (Open Inference Protocol, "Parameters"): the exits are an output.
    expect(body.parameters).toBeUndefined();
    body.outputs[0].data.slice(10, 20).forEach((v, k) => expect(Math.abs(v - (alone(1).output.data() as Float32Array)[k])).toBeLessThanOrEqual(1e-5));
  });

  it('answers each kind of bad request 400 with its reason, and keeps serving', async () => {
    const bad: Array<[string, unknown, Record<string, string> | undefined, RegExp]> = [
      ['/predict', { shape: [1, 28, 28] }, undefined, /must have required property 'input'/],
      ['/predict', { input: ['a'] }, undefined, /must be number/],
      ['/predict', { input: sample(0), shape: [2, 28, 28] }, undefined, /shape \[2,28,28\] holds 1568 values, the data 784/],
      ['/predict', { input: sample(0).slice(0, 28 * 28 - 28), shape: [1, 27, 28] }, undefined, /shape \[1,27,28\]; expected \[1,28,28\]/],
      ['/predict', Buffer.alloc(7), { 'content-type': 'application/octet-stream' }, /7 bytes, not a whole number of float32/],
      ['/predict', Buffer.from(new Float32Array(784).fill(NaN).buffer), { 'content-type': 'application/octet-stream' }, /non-finite value \(NaN\)/],
      ['/predict', '{"input": [1,', { 'content-type': 'application/json' }, /JSON/],
      ['/v2/models/mnist/infer', { inputs: [{ name: 'input', shape: [1, 1, 28, 28], datatype: 'INT64', data: sample(0) }] }, undefined, /datatype INT64; this model takes FP32/],
      ['/v2/models/mnist/infer', { inputs: [] }, undefined, /must NOT have fewer than 1 items/],
    ];
    for (const [path, body, headers, reason] of bad) {
      const reply = typeof body === 'string'
        ? await fetch(base + path, { method: 'POST', headers: headers!, body })
        : await post(path, body, headers);
      expect(reply.status).toBe(400);
      expect(((await reply.json()) as { error: string }).error).toMatch(reason);
    }
    expect((await post('/v2/models/other/infer', { inputs: [{ name: 'input', shape: [1], datatype: 'FP32', data: [1] }] })).status).toBe(404);
    const good = await post('/predict', { input: sample(5) });
    expect(good.status).toBe(200);
    expect(((await good.json()) as { exit: number }).exit).toBe(alone(5).exit);
  });

  it('reports health, metadata, statistics and Prometheus metrics', async () => {
    expect(await (await fetch(`${base}/v2/health/ready`)).json()).toEqual({ ready: true });
    expect(await (await fetch(`${base}/healthz`)).json()).toEqual({ ok: true });
    const metadata = await (await fetch(`${base}/v2/models/mnist`)).json() as { inputs: Array<{ shape: number[] }> };
    expect(metadata.inputs[0].shape).toEqual([-1, 1, 28, 28]);
    const stats = await (await fetch(`${base}/stats`)).json() as { answered: number; exitShares: number[]; thresholds: number[] };
    expect(stats.answered).toBeGreaterThanOrEqual(21);
    expect(stats.exitShares.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 10);
    expect(stats.thresholds).toEqual(thresholds);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toMatch(/tee_http_requests_total\{route="\/predict",status="200"\} \d+/);
    expect(metrics).toMatch(/tee_http_requests_total\{route="\/predict",status="400"\} [1-9]/);
    expect(metrics).toMatch(/tee_exit_share\{exit="0"\} 0\.\d+/);
    expect(metrics).toMatch(/tee_inference_latency_seconds_count \d+/);
  });

  it('drops the threshold series of an exit that adaptive thresholds close', async () => {
    // Every sample may leave at first (entropy 10); holding 100% agreement with the final
    // output on an untrained model closes both exits once 16 answers came back.
    const adaptive = new EarlyExitServer(model, {
      inputShape: [1, 28, 28], policy: { criterion: 'entropy', thresholds: [10, 10] }, maxBatchSize: 16, maxQueueDelayMs: 1, instances: 1,
      adaptive: { sampleRate: 1, every: 16, minSamples: 16, targetAgreement: 1 },
    });
    const adaptiveApp = createHttpApp(adaptive);
    await adaptiveApp.listen({ port: 0, host: '127.0.0.1' });
    const url = `http://127.0.0.1:${(adaptiveApp.server.address() as AddressInfo).port}`;
    expect(await (await fetch(`${url}/metrics`)).text()).toMatch(/tee_exit_threshold\{exit="0"\} 10/);
    await Promise.all(Array.from({ length: 16 }, (_, i) => adaptive.infer(x.narrow(0, i, 1))));
    await adaptive.close(); // the feedback of the batch has run
    expect(adaptive.stats().thresholds).toEqual([null, null]);
    expect(await (await fetch(`${url}/metrics`)).text()).not.toMatch(/tee_exit_threshold\{/);
    await adaptiveApp.close();
  });

  it('answers 503 when the queue is full, and serves again after', async () => {
    // The first two wait 2 s for company, long enough for the other three to arrive however busy the machine is.
    const small = new EarlyExitServer(model, { inputShape: [1, 28, 28], policy, maxBatchSize: 64, maxQueueDelayMs: 2000, maxQueueSize: 2, instances: 1 });
    const smallApp = createHttpApp(small);
    await smallApp.listen({ port: 0, host: '127.0.0.1' });
    const url = `http://127.0.0.1:${(smallApp.server.address() as AddressInfo).port}/predict`;
    const send = () => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ input: sample(0) }) });
    const statuses = await Promise.all(Array.from({ length: 5 }, send)).then((replies) => replies.map((r) => r.status));
    expect(statuses.filter((s) => s === 200)).toHaveLength(2);
    expect(statuses.filter((s) => s === 503)).toHaveLength(3);
    expect((await send()).status).toBe(200);
    await smallApp.close();
    await small.close();
  });
});

describe('torch-early-exit serve', () => {
  const CLI = require('path').join(__dirname, '..', 'bin', 'torch-early-exit.js') as string;

  const backbones: Array<'torchscript' | 'exported'> = CAN_EXPORT ? ['torchscript', 'exported'] : ['torchscript'];
  it.each(backbones)('serves a checkpoint (%s backbone) over HTTP, answering as the model does, and stops on SIGINT', async (backbone) => {
    const fs = await import('fs');
    const os = await import('os');
    const path = await import('path');
    const { spawnSync } = await import('child_process');
    const { saveCheckpoint } = await import('../lib');
    const model = mnistTwoExits(backbone);
    const { x, thresholds } = medianEntropySplit(model);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-serve-'));
    const policy = { criterion: 'entropy' as const, thresholds };
    saveCheckpoint(path.join(dir, 'served'), model, { extra: { serving: { inputShape: [1, 28, 28], policy } } });
    saveCheckpoint(path.join(dir, 'bare'), model);
    const bare = spawnSync(process.execPath, [CLI, 'serve', path.join(dir, 'bare')], { encoding: 'utf8', timeout: 60000 });
    expect(bare.status).toBe(1);
    expect(bare.stderr).toMatch(/has no extra.serving \{ inputShape or sequence, policy \}/);

    const { url, log: out, stop } = await startServe([path.join(dir, 'served'), '--port', '0', '--instances', '1']);
    // An exported program is compiled for inference too, and serve says so.
    expect(/exported program \(torch.export\), served compiled for inference: (oneDNN chains|oneDNN|frozen)$/m.test(out)).toBe(backbone === 'exported');
    const answers = await Promise.all([0, 1, 2, 3].map(async (i) => {
      const reply = await fetch(`${url}/v2/models/model/infer`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: [{ name: 'input', shape: [1, 1, 28, 28], datatype: 'FP32', data: Array.from(x.narrow(0, i, 1).data() as Float32Array) }] }),
      });
      return ((await reply.json()) as { outputs: Array<{ name: string; data: number[] }> }).outputs.find((o) => o.name === 'exit')!.data[0];
    }));
    expect(answers).toEqual([0, 1, 2, 3].map((i) => model.forwardEarlyExit(x.narrow(0, i, 1), { ...policy, perSample: true }).exit));
    expect(await stop()).toBe(0);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
