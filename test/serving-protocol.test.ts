/**
 * The HTTP server against hostile and careless clients (slow, stalled, oversized, malformed,
 * too many), and the Open Inference Protocol to the letter of kserve's
 * `docs/predict-api/v2/required_api.md` (the section each rule comes from is named).
 * Real sockets on loopback: `net` for what fetch would not send, fetch and `http` for the rest.
 */
import * as http from 'http';
import * as net from 'net';
import { AddressInfo } from 'net';
import { EarlyExitServer, createHttpApp } from '../lib';
import { medianEntropySplit, mnistTwoExits } from './helpers';

const model = mnistTwoExits();
const { x, thresholds } = medianEntropySplit(model);
const policy = { criterion: 'entropy' as const, thresholds };
const sample = (i: number) => Array.from(x.narrow(0, i, 1).data() as Float32Array);
const alone = (i: number) => model.forwardEarlyExit(x.narrow(0, i, 1), { ...policy, perSample: true });

let server: EarlyExitServer;
let app: ReturnType<typeof createHttpApp>;
let port = 0;
let base = '';

beforeAll(async () => {
  server = new EarlyExitServer(model, { inputShape: [1, 28, 28], policy, maxBatchSize: 8, maxQueueDelayMs: 2, maxQueueSize: 16, instances: 1 });
  app = createHttpApp(server, { modelName: 'mnist', bodyLimit: 64 * 1024, requestTimeoutMs: 1500, headersTimeoutMs: 1000 });
  await app.listen({ port: 0, host: '127.0.0.1' });
  port = (app.server.address() as AddressInfo).port;
  base = `http://127.0.0.1:${port}`;
});
afterAll(async () => {
  await app.close();
  await server.close();
});

const post = (path: string, body: unknown, contentType = 'application/json') =>
  fetch(base + path, { method: 'POST', headers: { 'content-type': contentType, connection: 'close' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
const errorOf = async (reply: Response) => ((await reply.json()) as { error: string }).error;

/** Sends `text` on a raw socket and resolves with everything the server wrote back until it closed (or `waitMs` passed). */
function raw(text: string, waitMs = 10000, to = port): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(to, '127.0.0.1');
    let answer = '';
    const timer = setTimeout(() => { socket.destroy(); resolve(answer); }, waitMs);
    socket.on('data', (chunk) => { answer += chunk.toString(); });
    socket.on('close', () => { clearTimeout(timer); resolve(answer); });
    socket.on('error', () => undefined);
    socket.write(text);
  });
}
const statusLine = (answer: string) => answer.split('\r\n')[0];
const bodyOf = (answer: string) => JSON.parse(answer.slice(answer.lastIndexOf('\r\n\r\n') + 4)) as { error: string };

describe('hostile clients', () => {
  it('answers a text/plain body 415, naming what the route takes (it was 500 "undefined is not iterable")', async () => {
    const reply = await post('/predict', JSON.stringify({ input: sample(0) }), 'text/plain');
    expect(reply.status).toBe(415);
    expect(await errorOf(reply)).toBe("the content type 'text/plain' is not one this route takes: application/json or application/octet-stream");
    const v2 = await post('/v2/models/mnist/infer', 'x', 'application/octet-stream');
    expect(v2.status).toBe(415);
  });

  it('answers 400 with a message for malformed JSON, a "__proto__" key and properties the schema forbids', async () => {
    const broken = await post('/predict', '{"input": [1,');
    expect(broken.status).toBe(400);
    expect(await errorOf(broken)).toMatch(/^the body is not valid JSON: /);
    const proto = await post('/predict', `{"input": ${JSON.stringify(sample(0))}, "__proto__": {"polluted": 1}}`);
    expect(proto.status).toBe(400);
    expect(await errorOf(proto)).toBe('body must NOT have additional properties');
    expect(({} as { polluted?: number }).polluted).toBeUndefined();
    const extra = await post('/predict', { input: sample(0), extra: 1 });
    expect(extra.status).toBe(400);
    // No coercion: a string is not a number.
    const text = await post('/predict', { input: sample(0).map(String) });
    expect(text.status).toBe(400);
    expect(await errorOf(text)).toBe('body/input/0 must be number');
  });

  it('answers an oversized body 413 naming the limit, before 100 Continue when the client asks first', async () => {
    const announced = await raw(`POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n`);
    expect(statusLine(announced)).toBe('HTTP/1.1 413 Payload Too Large');
    expect(announced).not.toMatch(/100 Continue/);
    expect(bodyOf(announced).error).toBe('the body has 100000000 bytes, more than 65536, the most this server takes (bodyLimit)');
    const sent = await post('/predict', JSON.stringify({ input: new Array(20000).fill(0.5) }));
    expect(sent.status).toBe(413);
    expect(await errorOf(sent)).toBe('the body is larger than 65536 bytes, the most this server takes (bodyLimit)');
  });

  it('answers a request of more samples than the queue can ever hold 413, naming maxQueueSize (it was 503 "try again")', async () => {
    const reply = await post('/v2/models/mnist/infer', { inputs: [{ name: 'input', shape: [17, 1, 28, 28], datatype: 'FP32', data: new Array(17 * 784).fill(0) }] });
    // 17 samples of zeros fit the 64 KiB body as JSON.
    expect(reply.status).toBe(413);
    expect(await errorOf(reply)).toMatch(/17 samples; this server queues at most 16 \(maxQueueSize\)/);
  });

  it('times out a body that stalls half-way with 408 naming the limit, and keeps serving', async () => {
    const started = Date.now();
    const stalled = await raw(`POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"input": [`);
    expect(statusLine(stalled)).toBe('HTTP/1.1 408 Request Timeout');
    expect(bodyOf(stalled).error).toMatch(/did not arrive whole within 1500 ms \(requestTimeoutMs\)/);
    expect(Date.now() - started).toBeLessThan(6000);
    expect((await post('/predict', { input: sample(1) })).status).toBe(200);
  });

  it('takes 1,000 small headers (it was a bare 400) and answers headers over 16 KiB 431 with a message', async () => {
    const send = (headers: Record<string, string>) => new Promise<{ status: number; body: string }>((resolve, reject) => {
      const request = http.request({ port, host: '127.0.0.1', method: 'POST', path: '/predict', headers: { 'content-type': 'application/json', ...headers } }, (res) => {
        let body = '';
        res.on('data', (chunk) => { body += chunk; });
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      request.on('error', reject);
      request.end(JSON.stringify({ input: sample(2) }));
    });
    const many = await send(Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`x-h-${i}`, 'v'])));
    expect(many.status).toBe(200);
    expect(JSON.parse(many.body).exit).toBe(alone(2).exit);
    const large = await send({ 'x-large': 'a'.repeat(20000) });
    expect(large.status).toBe(431);
    expect(JSON.parse(large.body).error).toMatch(/headers are larger than 16384 bytes/);
  });

  it('refuses a request on a connection beyond maxConnections with 503 naming the limit, and serves again once they close', async () => {
    const capped = createHttpApp(server, { maxConnections: 3 });
    await capped.listen({ port: 0, host: '127.0.0.1' });
    const cappedPort = (capped.server.address() as AddressInfo).port;
    const holders = Array.from({ length: 3 }, () => net.connect(cappedPort, '127.0.0.1'));
    await Promise.all(holders.map((socket) => new Promise((resolve) => socket.once('connect', resolve))));
    const refused = await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, 10000, cappedPort);
    expect(statusLine(refused)).toBe('HTTP/1.1 503 Service Unavailable');
    expect(bodyOf(refused).error).toBe('the server holds 3 connections, the most it takes (maxConnections); try again when fewer are open');
    holders.forEach((socket) => socket.destroy());
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(statusLine(await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, 10000, cappedPort))).toBe('HTTP/1.1 200 OK');
    await capped.close();
  });
});

describe('Open Inference Protocol, as required_api.md writes it', () => {
  const infer = (body: unknown, path = '/v2/models/mnist/infer') => post(path, body);
  const input = (data: unknown, extra: Record<string, unknown> = {}) => ({ name: 'input', shape: [2, 1, 28, 28], datatype: 'FP32', data, ...extra });
  const flat = [...sample(0), ...sample(1)];
  /** Nested as [2][1][28][28], row-major. */
  const nested = [0, 1].map((i) => [Array.from({ length: 28 }, (_, r) => sample(i).slice(r * 28, (r + 1) * 28))]);

  it('"HTTP/REST": the version routes answer as the unversioned ones; another version is 404', async () => {
    const metadata = await (await fetch(`${base}/v2/models/mnist`)).json();
    expect(await (await fetch(`${base}/v2/models/mnist/versions/1`)).json()).toEqual(metadata);
    expect(await (await fetch(`${base}/v2/models/mnist/versions/1/ready`)).json()).toEqual({ name: 'mnist', ready: true });
    const versioned = await infer({ inputs: [input(flat)] }, '/v2/models/mnist/versions/1/infer');
    expect(versioned.status).toBe(200);
    const other = await fetch(`${base}/v2/models/mnist/versions/2`);
    expect(other.status).toBe(404);
    expect(await errorOf(other)).toBe("model 'mnist' has no version '2'; its version is '1'");
  });

  it('"Tensor Data": nested data in row-major order answers as the flat data', async () => {
    const a = await (await infer({ inputs: [input(flat)] })).json();
    const b = await (await infer({ inputs: [input(nested)] })).json();
    expect(b).toEqual(a);
  });

  it('"Tensor Data": null, strings and booleans in data are 400 naming where (null was read as 0)', async () => {
    const withNull = [...flat];
    (withNull as unknown[])[5] = null;
    const reply = await infer({ inputs: [input(withNull)] });
    expect(reply.status).toBe(400);
    expect(await errorOf(reply)).toBe("input 'input': data[5] is null; tensor data holds numbers of its datatype (Open Inference Protocol, \"Tensor Data\")");
    const deep = JSON.parse(JSON.stringify(nested));
    deep[1][0][3][7] = 'x';
    expect(await errorOf(await infer({ inputs: [input(deep)] }))).toMatch(/^input 'input': data\[1\]\[0\]\[3\]\[7\] is "x"/);
  });

  it('"Request Output": only the outputs asked for, in that order; an unknown name is 400 (it was 200)', async () => {
    const exitOnly = await (await infer({ inputs: [input(flat)], outputs: [{ name: 'exit' }] })).json() as { outputs: Array<{ name: string; data: number[] }> };
    expect(exitOnly.outputs.map((o) => o.name)).toEqual(['exit']);
    expect(exitOnly.outputs[0].data).toEqual([alone(0).exit, alone(1).exit]);
    const unknown = await infer({ inputs: [input(flat)], outputs: [{ name: 'logits' }] });
    expect(unknown.status).toBe(400);
    expect(await errorOf(unknown)).toBe("this model has no output 'logits'; its outputs are 'output' and 'exit'");
  });

  it('"Request Input": the input name and datatype are checked against the metadata', async () => {
    const named = await infer({ inputs: [{ ...input(flat), name: 'input0' }] });
    expect(named.status).toBe(400);
    expect(await errorOf(named)).toBe("this model has no input 'input0'; its input is 'input' (GET /v2/models/NAME lists it)");
    expect((await infer({ inputs: [{ ...input(flat), datatype: 'UINT32' }] })).status).toBe(400);
  });

  it('"Parameters": values are strings, numbers or booleans, in requests (else 400) and in answers', async () => {
    const bad = await infer({ inputs: [input(flat)], parameters: { exit: [0, 1] } });
    expect(bad.status).toBe(400);
    expect(await errorOf(bad)).toMatch(/^body\/parameters\/exit must be string,number,boolean/);
    const good = await infer({ inputs: [input(flat, { parameters: { binary_data: false } })], parameters: { priority: 1, tag: 'a', trace: true } });
    expect(good.status).toBe(200);
    const answer = await good.json() as Record<string, unknown>;
    for (const value of Object.values((answer.parameters ?? {}) as Record<string, unknown>)) expect(['string', 'number', 'boolean']).toContain(typeof value);
  });

  it("a client written from the spec's example request and response (\"Inference Request Examples\")", async () => {
    // The example: POST /v2/models/mymodel/infer { "id": "42", "inputs": [...], "outputs": [{ "name": "output0" }] },
    // answered { "id": "42", "outputs": [{ "name": "output0", "shape": [3, 2], "datatype": "FP32", "data": [...] }] },
    // with this model's names and shapes.
    const client = async (model: string, request: { id: string; inputs: unknown[]; outputs: Array<{ name: string }> }) => {
      const reply = await fetch(`${base}/v2/models/${model}/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request) });
      if (reply.status !== 200) throw new Error(`${reply.status}: ${await reply.text()}`);
      const body = await reply.json() as { id: string; model_name: string; outputs: Array<{ name: string; shape: number[]; datatype: string; data: number[] }> };
      const output = body.outputs.find((o) => o.name === request.outputs[0].name)!;
      const rows = Array.from({ length: output.shape[0] }, (_, r) => output.data.slice(r * output.shape[1], (r + 1) * output.shape[1]));
      return { id: body.id, model: body.model_name, names: body.outputs.map((o) => o.name), datatype: output.datatype, rows };
    };
    const answer = await client('mnist', { id: '42', inputs: [input(nested)], outputs: [{ name: 'output' }] });
    expect(answer.id).toBe('42');
    expect(answer.model).toBe('mnist');
    expect(answer.names).toEqual(['output']);
    expect(answer.datatype).toBe('FP32');
    answer.rows.forEach((row, i) => {
      const reference = Array.from(alone(i).output.data() as Float32Array);
      row.forEach((value, k) => expect(Math.abs(value - reference[k])).toBeLessThanOrEqual(1e-5));
    });
    await expect(client('mymodel', { id: '42', inputs: [input(nested)], outputs: [{ name: 'output' }] })).rejects.toThrow(/^404: .*no model 'mymodel' here/);
  });
});
