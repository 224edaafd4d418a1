/**
 * The HTTP face of an `EarlyExitServer`, on fastify (JSON schema validation of every body):
 *
 *   POST /predict                    {"input": [...], "shape": [...]}, or raw float32 bytes
 *                                    (application/octet-stream) with the shape in X-Input-Shape;
 *                                    answers {prediction, probabilities, exit, latencyMs}
 *   POST /v2/models/{name}[/versions/1]/infer   the Open Inference Protocol (KServe v2, as
 *                                    Triton, KServe, Seldon and TorchServe clients speak it;
 *                                    `open-inference.ts`); the exit each sample took is the
 *                                    output "exit"
 *   GET  /v2/models/{name}[/versions/1][/ready]  model metadata and readiness;
 *   GET  /v2/health/ready, /v2/health/live
 *   GET  /stats, /healthz            the server's statistics; liveness
 *   GET  /metrics                    Prometheus text: requests by route and status, latency and
 *                                    batch-size histograms, queue length, exit shares, thresholds
 *
 * A wrong shape, dtype, size or body is answered 400 with the reason; a content type a route
 * does not take 415; a body over `bodyLimit`, or more samples than the queue can ever hold, 413;
 * a full queue, a request that waited too long or a closing server 503; a slow, oversized or
 * malformed client as `http-limits.ts` says; anything else 500. The server goes on serving.
 */
import Fastify, { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import * as client from 'prom-client';
import { checkOptions } from '../util/check';
import { BadRequestError, RequestTimeoutError, ServerClosedError, ServerOverloadedError } from './errors';
import { DEFAULT_LIMITS, HttpLimits, OVER_CAPACITY, clientErrorHandler, limitedServerFactory } from './http-limits';
import { INFER_REQUEST_SCHEMA, INPUT_NAME, InferRequest, inferResponse, parseInferRequest } from './open-inference';
import { EarlyExitServer, InferResult } from './server';

export interface HttpOptions extends Partial<HttpLimits> {
  /** The model's name in the Open Inference Protocol's paths (default 'model'). */
  modelName?: string;
}

/** An error with the HTTP status it is answered with. */
function httpError(statusCode: number, message: string): Error {
  return Object.assign(new Error(message), { statusCode });
}

/** The HTTP status for an error a request met. */
export function statusOf(error: unknown): number {
  if (error instanceof BadRequestError) return 400;
  if (error instanceof ServerOverloadedError || error instanceof RequestTimeoutError || error instanceof ServerClosedError) return 503;
  const status = (error as { statusCode?: number })?.statusCode;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}

function softmax(logits: Float32Array): number[] {
  const max = Math.max(...logits);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** A shape given by a client: positive integers whose product is `size`. */
function checkShape(shape: number[], size: number, what: string): void {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== size) throw new BadRequestError(`${what}: shape [${shape}] holds ${count} values, the data ${size}`);
}

const PREDICT_SCHEMA = {
  body: {
    content: {
      'application/json': {
        schema: {
          type: 'object', required: ['input'], additionalProperties: false,
          properties: {
            input: { type: 'array', items: { type: 'number' }, minItems: 1 },
            shape: { type: 'array', items: { type: 'integer', minimum: 1 }, minItems: 1 },
          },
        },
      },
      'application/octet-stream': { schema: {} },
    },
  },
};

const V2_INFER_SCHEMA = { body: INFER_REQUEST_SCHEMA };

/** Builds the fastify app over `server`; call `listen` on it (and `close`, which closes neither the server nor the model). */
export function createHttpApp(server: EarlyExitServer, options: HttpOptions = {}): FastifyInstance {
  checkOptions(options, ['modelName', ...Object.keys(DEFAULT_LIMITS)], 'createHttpApp: options');
  const modelName = options.modelName ?? 'model';
  const limits: HttpLimits = { ...DEFAULT_LIMITS };
  for (const key of Object.keys(DEFAULT_LIMITS) as Array<keyof HttpLimits>) {
    const value = options[key];
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`createHttpApp: options.${key} must be a positive whole number, got ${value}`);
    limits[key] = value;
  }
  const app = Fastify({
    bodyLimit: limits.bodyLimit, serverFactory: limitedServerFactory(limits), clientErrorHandler: clientErrorHandler(limits),
    // The schemas say what a body must be: nothing is coerced ("1" is not 1, null is not 0) or silently dropped.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allowUnionTypes: true } },
  });
  const sampleSize = server.inputShape.reduce((a, b) => a * b, 1);

  const registry = new client.Registry();
  const requests = new client.Counter({ name: 'tee_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['route', 'status'], registers: [registry] });
  const latency = new client.Histogram({
    name: 'tee_inference_latency_seconds', help: 'From infer() to the answer, per sample', registers: [registry],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1],
  });
  const queueLength = new client.Gauge({ name: 'tee_queue_length', help: 'Requests waiting for a batch', registers: [registry] });
  const inFlight = new client.Gauge({ name: 'tee_batches_in_flight', help: 'Batches running now', registers: [registry] });
  const batchSize = new client.Gauge({ name: 'tee_mean_batch_size', help: 'Mean samples per batch so far', registers: [registry] });
  const exitShare = new client.Gauge({
    name: 'tee_exit_share', help: 'Share of answered samples by exit (the last: the final output)', labelNames: ['exit'], registers: [registry],
  });
  const exitThreshold = new client.Gauge({
    name: 'tee_exit_threshold', help: 'The threshold of each exit (absent: never exits there)', labelNames: ['exit'], registers: [registry],
  });
  /** The gauges from one `stats()` a scrape; an exit whose threshold became null loses its series. */
  const observe = (): void => {
    const stats = server.stats();
    queueLength.set(stats.queued);
    inFlight.set(stats.inFlight);
    batchSize.set(stats.meanBatchSize);
    stats.exitShares.forEach((share, exit) => exitShare.set({ exit: String(exit) }, share));
    exitThreshold.reset();
    stats.thresholds.forEach((t, exit) => { if (t !== null) exitThreshold.set({ exit: String(exit) }, t); });
  };

  // JSON and raw float32 only: fastify's text/plain parser would hand a route a string.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try {
      // JSON.parse makes a "__proto__" key an own property, never a prototype.
      done(null, JSON.parse(body as string));
    } catch (error) {
      done(new BadRequestError(`the body is not valid JSON: ${(error as Error).message}`), undefined);
    }
  });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
  app.addHook('onRequest', async (request, reply) => {
    if ((request.raw.socket as { [OVER_CAPACITY]?: boolean })[OVER_CAPACITY]) {
      void reply.header('connection', 'close');
      throw httpError(503, `the server holds ${limits.maxConnections} connections, the most it takes (maxConnections); try again when fewer are open`);
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    requests.inc({ route: request.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });
  app.setErrorHandler((error: Error & { validation?: unknown; code?: string }, request, reply) => {
    const status = error.validation ? 400 : statusOf(error);
    let message = error.message;
    if (error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') message = `the content type '${request.headers['content-type'] ?? '(none)'}' is not one this route takes: ${accepted(request)}`;
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') message = `the body is larger than ${limits.bodyLimit} bytes, the most this server takes (bodyLimit)`;
    void reply.status(status).send({ error: message });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ error: `no route ${request.method} ${request.url}` });
  });

  const infer = async (data: Float32Array | number[]): Promise<InferResult> => {
    const result = await server.infer(data);
    latency.observe((result.queuedMs + result.computeMs) / 1000);
    return result;
  };

  const accepted = (request: FastifyRequest) => (request.routeOptions.url === '/predict' ? 'application/json or application/octet-stream' : 'application/json');

  /**
   * The token sequences of a body for a server of sequences: ids of shape [L] (one sequence, the
   * default) or [N, L] (N sequences of L ids each).
   */
  const sequences = (values: number[], shape: number[] | undefined, what: string): number[][] => {
    const given = shape ?? [values.length];
    checkShape(given, values.length, what);
    if (given.length > 2) throw new BadRequestError(`${what}: shape [${given}]; token ids are [L] (one sequence) or [N, L]`);
    const [count, length] = given.length === 2 ? given : [1, given[0]];
    if (count > server.maxQueueSize) {
      throw httpError(413, `${what}: ${count} sequences; this server queues at most ${server.maxQueueSize} (maxQueueSize), so it could never take them all: send at most that many per request`);
    }
    return Array.from({ length: count }, (_, i) => values.slice(i * length, (i + 1) * length));
  };

  /** The samples of a body: `count` Float32Arrays of one sample each. */
  const samples = (values: ArrayLike<number>, shape: number[] | undefined, what: string): Float32Array[] => {
    const flat = Float32Array.from(values);
    const given = shape ?? [...server.inputShape];
    checkShape(given, flat.length, what);
    const batched = given.length === server.inputShape.length + 1;
    const sampleShape = batched ? given.slice(1) : given;
    if (sampleShape.join() !== server.inputShape.join()) {
      throw new BadRequestError(`${what}: shape [${given}]; expected [${server.inputShape}] or [N, ${server.inputShape}]`);
    }
    const count = flat.length / sampleSize;
    if (count > server.maxQueueSize) {
      throw httpError(413, `${what}: ${count} samples; this server queues at most ${server.maxQueueSize} (maxQueueSize), so it could never take them all: send at most that many per request`);
    }
    return Array.from({ length: count }, (_, i) => flat.subarray(i * sampleSize, (i + 1) * sampleSize));
  };

  const answer = (result: InferResult) => {
    const probabilities = softmax(result.output);
    return { prediction: argmax(probabilities), probabilities, exit: result.exit, latencyMs: result.queuedMs + result.computeMs };
  };

  app.post('/predict', { schema: PREDICT_SCHEMA }, async (request: FastifyRequest, reply: FastifyReply) => {
    let inputs: Array<Float32Array | number[]>;
    if (server.sequence) {
      if (Buffer.isBuffer(request.body)) throw httpError(415, 'this model takes token ids: send them as JSON ({ "input": [ids...] }), not raw bytes');
      const { input, shape } = request.body as { input: number[]; shape?: number[] };
      const bad = input.findIndex((id) => !Number.isSafeInteger(id));
      if (bad >= 0) throw new BadRequestError(`input: value ${bad} is ${input[bad]}, not a token id (a whole number)`);
      inputs = sequences(input, shape, 'input');
    } else if (Buffer.isBuffer(request.body)) {
      const body = request.body;
      if (body.length % 4 !== 0) throw new BadRequestError(`the body has ${body.length} bytes, not a whole number of float32 values`);
      const header = request.headers['x-input-shape'];
      const shape = typeof header === 'string' ? header.split(',').map((d) => Number(d.trim())) : undefined;
      if (shape && shape.some((d) => !Number.isInteger(d) || d < 1)) throw new BadRequestError(`X-Input-Shape must list positive integers, got '${header}'`);
      const copy = new Float32Array(body.length / 4);
      Buffer.from(copy.buffer).set(body);
      inputs = samples(copy, shape, 'the float32 body');
    } else {
      const { input, shape } = request.body as { input: number[]; shape?: number[] };
      inputs = samples(input, shape, 'input');
    }
    const results = await Promise.all(inputs.map(infer));
    return reply.send(results.length === 1 ? answer(results[0]) : results.map(answer));
  });

  app.get('/v2/health/live', async () => ({ live: true }));
  app.get('/v2/health/ready', async () => ({ ready: true }));
  app.get('/v2', async () => ({ name: 'torch-early-exit', version: '0.1.0', extensions: [] }));
  const metadata = {
    name: modelName, versions: ['1'], platform: 'pytorch_torchscript',
    inputs: [server.sequence ? { name: 'input', datatype: 'INT64', shape: [-1, -1] } : { name: 'input', datatype: 'FP32', shape: [-1, ...server.inputShape] }],
    outputs: [{ name: 'output', datatype: 'FP32', shape: [-1, -1] }, { name: 'exit', datatype: 'INT32', shape: [-1] }],
  };
  const checkModel = (request: FastifyRequest) => {
    const { name, version } = request.params as { name: string; version?: string };
    if (name !== modelName) throw httpError(404, `no model '${name}' here; this server serves '${modelName}'`);
    if (version !== undefined && version !== '1') throw httpError(404, `model '${modelName}' has no version '${version}'; its version is '1'`);
  };
  const inferRoute = async (request: FastifyRequest) => {
    checkModel(request);
    const parsed: InferRequest = parseInferRequest(request.body as Parameters<typeof parseInferRequest>[0], server.sequence ? 'INT64' : 'FP32');
    const what = `input '${INPUT_NAME}'`;
    const inputs = server.sequence ? sequences(parsed.values as number[], parsed.shape, what) : samples(parsed.values, parsed.shape, what);
    const results = await Promise.all(inputs.map(infer));
    return inferResponse(modelName, parsed, results);
  };
  for (const prefix of ['/v2/models/:name', '/v2/models/:name/versions/:version']) {
    app.get(prefix, async (request) => { checkModel(request); return metadata; });
    app.get(`${prefix}/ready`, async (request) => { checkModel(request); return { name: modelName, ready: true }; });
    app.post(`${prefix}/infer`, {
      schema: V2_INFER_SCHEMA,
      // Before the schema, which would call raw bytes a body that "must be object".
      preValidation: async (request) => {
        if (Buffer.isBuffer(request.body)) throw httpError(415, `the content type '${request.headers['content-type']}' is not one this route takes: application/json`);
      },
    }, inferRoute);
  }

  app.get('/stats', async () => server.stats());
  app.get('/healthz', async () => ({ ok: true }));
  app.get('/metrics', async (_request, reply) => {
    observe();
    void reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
  return app;
}
