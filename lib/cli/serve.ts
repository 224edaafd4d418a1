/**
 * `torch-early-exit serve [checkpoint]`: serves a checkpoint that `saveCheckpoint` wrote
 * (with `extra.serving`: the input shape and the exit policy, as the demo writes them) over
 * HTTP. With no checkpoint it serves the demo's, running the demo first when it is missing.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadCheckpoint } from '../early-exit/checkpoint';
import { EarlyExitModel } from '../early-exit/model';
import { EarlyExitServer, createHttpApp } from '../serving';
import type { HttpLimits } from '../serving/http-limits';
import { setTensorExprFuserEnabled } from '../torch/jit';
import * as torch from '../torch/torch';
import { UsageError, parseCommand, parseDemoArgs } from './args';
import { DemoServing, runDemo } from './demo';

export const SERVE_USAGE = `Usage: torch-early-exit serve [CHECKPOINT] [options]

Serves an early-exit model over HTTP: POST /predict, the Open Inference Protocol
(/v2/models/NAME/infer), GET /stats, /healthz and /metrics. CHECKPOINT is a folder that
saveCheckpoint wrote with extra.serving (inputShape or sequence, policy); by default the
demo's (out/demo/checkpoint), trained first if it is missing; demo --task spam writes one of
token ids (out/demo-spam/checkpoint).

Options:
  --port N               port (default 8080; 0 picks a free one)
  --host H               address to listen on (default 127.0.0.1)
  --name NAME            the model's name in /v2/models/NAME (default mnist for the demo, else model)
  --max-batch-size N     the most samples in a batch (default 32)
  --max-queue-delay-ms X how long a request may wait for others (default 2)
  --max-queue-size N     requests queued before new ones get 503 (default 1024)
  --timeout-ms X         refuse a request that waited this long in the queue (default: none)
  --instances N          batches in flight at once, each on one intra-op thread (default: one per core)
  --body-limit N         the largest body in bytes (default 16777216); larger: 413
  --request-timeout-ms X a request must arrive whole within this (default 30000); else 408
  --headers-timeout-ms X its headers within this (default 10000); else 408
  --keep-alive-timeout-ms X  an idle connection is closed after this (default 5000)
  --max-connections N    connections open at once (default 512, fewer under ulimit -n 1024); beyond: 503
  --whole-batch          a batch leaves at an exit only when all of it does (default: each sample)
  --full                 serve the network without its exits (what early exits are measured against)
  --adaptive             retune the thresholds online from the final output's feedback (Apparate)
  --target-agreement X   with --adaptive: agreement with the final output to hold per exit (default 0.99)
  --sample-rate X        with --adaptive: share of requests also run to the final output (default 0.05)
  -h, --help             this text`;

interface ServeOptions {
  checkpoint?: string; port: number; host: string; name?: string; maxBatchSize: number; maxQueueDelayMs: number;
  maxQueueSize: number; timeoutMs?: number; instances?: number; perSample: boolean; full: boolean;
  adaptive?: { targetAgreement?: number; sampleRate?: number };
  limits: Partial<HttpLimits>;
}

/** The HTTP limits' flags and the options they set. */
const LIMIT_FLAGS: Record<string, keyof HttpLimits> = {
  '--body-limit': 'bodyLimit', '--request-timeout-ms': 'requestTimeoutMs', '--headers-timeout-ms': 'headersTimeoutMs',
  '--keep-alive-timeout-ms': 'keepAliveTimeoutMs', '--max-connections': 'maxConnections',
};

function parseServeArgs(argv: readonly string[]): ServeOptions | null {
  const options: ServeOptions = { port: 8080, host: '127.0.0.1', maxBatchSize: 32, maxQueueDelayMs: 2, maxQueueSize: 1024, perSample: true, full: false, limits: {} };
  const number = (flag: string, value: string | undefined, integer: boolean): number => {
    const n = Number(value);
    if (value === undefined || !Number.isFinite(n) || n < 0 || (integer && !Number.isInteger(n))) {
      throw new UsageError(`${flag} needs a ${integer ? 'whole ' : ''}number, got '${value}'`);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    switch (flag) {
      case '-h': case '--help': return null;
      case '--port': options.port = number(flag, value, true); i++; break;
      case '--host': options.host = value ?? ''; i++; break;
      case '--name': options.name = value; i++; break;
      case '--max-batch-size': options.maxBatchSize = number(flag, value, true); i++; break;
      case '--max-queue-delay-ms': options.maxQueueDelayMs = number(flag, value, false); i++; break;
      case '--max-queue-size': options.maxQueueSize = number(flag, value, true); i++; break;
      case '--timeout-ms': options.timeoutMs = number(flag, value, false); i++; break;
      case '--instances': options.instances = number(flag, value, true); i++; break;
      case '--whole-batch': options.perSample = false; break;
      case '--full': options.full = true; break;
      case '--adaptive': options.adaptive = { ...options.adaptive }; break;
      case '--target-agreement': options.adaptive = { ...options.adaptive, targetAgreement: number(flag, value, false) }; i++; break;
      case '--sample-rate': options.adaptive = { ...options.adaptive, sampleRate: number(flag, value, false) }; i++; break;
      default:
        if (flag in LIMIT_FLAGS) {
          const n = number(flag, value, true);
          if (n < 1) throw new UsageError(`${flag} needs a whole number of at least 1, got '${value}'`);
          options.limits[LIMIT_FLAGS[flag]] = n;
          i++;
          break;
        }
        if (flag.startsWith('-') || options.checkpoint !== undefined) throw new UsageError(`unknown argument '${flag}'`);
        options.checkpoint = flag;
    }
  }
  return options;
}

/** Runs `serve` until SIGINT or SIGTERM; resolves to the exit code. */
export async function serve(argv: readonly string[]): Promise<number> {
  const options = parseCommand('serve', SERVE_USAGE, () => parseServeArgs(argv));
  if (typeof options === 'number') return options;
  const demoOptions = parseDemoArgs([])!;
  const checkpoint = options.checkpoint ?? path.join(demoOptions.out, 'checkpoint');
  if (!fs.existsSync(path.join(checkpoint, 'checkpoint.json'))) {
    if (options.checkpoint !== undefined) throw new Error(`no checkpoint in ${checkpoint} (checkpoint.json is missing)`);
    console.log(`no trained model in ${checkpoint} yet: running the demo first (torch-early-exit demo)\n`);
    await runDemo(demoOptions);
    console.log('');
  }
  const loaded = loadCheckpoint(checkpoint);
  const serving = (loaded.extra as { serving?: DemoServing } | undefined)?.serving;
  if (!serving || !(Array.isArray(serving.inputShape) || serving.sequence) || !serving.policy) {
    throw new Error(`${checkpoint} has no extra.serving { inputShape or sequence, policy }: save it with ` +
      'saveCheckpoint(dir, model, { extra: { serving: { inputShape, policy: { criterion, thresholds } } } })');
  }
  torch.setNumThreads(1);
  // Batches and sequences of every size: no kernel compiled per shape in the middle of answers.
  setTensorExprFuserEnabled(false);
  const chosen = (options.full ? new EarlyExitModel(loaded.model.plainBackbone(), []) : loaded.model).eval();
  const model = chosen.optimizeForInference();
  const policy = options.full ? { criterion: serving.policy.criterion, thresholds: [] } : serving.policy;
  // Compiled, samples leave alone where every batch-sized value read after the exit is a tensor
  // whose batch dimension the graph tells, and is carried; an exported program's interpreter
  // also shrinks what the compiled graph cannot carry (a batch-sized list, say).
  const interpreterOnly = model.exitPoints.filter((_, i) => options.perSample && policy.thresholds[i] !== null &&
    !model.inferenceExitsPerSample![i] && model.exitsPerSample[i]);
  if (interpreterOnly.length > 0) {
    model.leaveInferenceMode();
    console.log(`served uncompiled: per-sample exits at ${interpreterOnly.map((p) => `'${p}'`).join(', ')} need the exported program's ` +
      'interpreter, which shrinks every value that carries the batch; compiled, they would be refused (--whole-batch serves compiled)');
  } else if (chosen.backbone.isExportedProgram) {
    console.log(`the backbone is an exported program (torch.export), served compiled for inference: ${model.inferenceOptimization}`);
  }
  const server = new EarlyExitServer(model, {
    ...(serving.sequence ? { sequence: serving.sequence } : { inputShape: serving.inputShape }),
    policy, perSample: options.perSample, maxBatchSize: options.maxBatchSize,
    maxQueueDelayMs: options.maxQueueDelayMs, maxQueueSize: options.maxQueueSize, timeoutMs: options.timeoutMs,
    ...(options.instances !== undefined ? { instances: options.instances } : {}),
    ...(options.adaptive && !options.full ? { adaptive: options.adaptive } : {}),
  });
  const name = options.name ?? (options.checkpoint === undefined ? 'mnist' : 'model');
  const app = createHttpApp(server, { modelName: name, ...options.limits });
  const address = await app.listen({ port: options.port, host: options.host });
  console.log(`serving ${checkpoint} as '${name}' on ${address}: POST /predict, POST /v2/models/${name}/infer, ` +
    `GET /stats /healthz /metrics; input ${serving.sequence ? `token ids (1 to ${serving.sequence.maxLength})` : `[${serving.inputShape}]`}, ${options.full ? 'no exits' : `${policy.criterion} thresholds ` +
      `[${policy.thresholds.map((t) => (t === null ? 'never' : t.toFixed(4)))}]${options.perSample ? ', per sample' : ', whole batches'}` +
      `${options.adaptive ? ', adapting online' : ''}`}; Ctrl-C stops`);
  await new Promise<void>((resolve) => {
    const stop = () => { process.off('SIGINT', stop); process.off('SIGTERM', stop); resolve(); };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  console.log('stopping: finishing the batches in flight');
  await app.close();
  await server.close();
  return 0;
}
