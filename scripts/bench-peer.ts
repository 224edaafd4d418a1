/**
 * This library against onnxruntime-node, the peer a Node developer would use, on the same
 * models exported from the same PyTorch weights (scripts/peer_models.py): ResNet-20 (CIFAR,
 * exit after layer1.2.relu2), the demo's MNIST CNN (exit after features1) and torchvision's
 * MobileNetV2 at 224 px (exit after features.4); and the transformer fixtures' text encoder,
 * its full forward on held-out e-mails (text_encoder). Each comparison runs the two sides in two
 * processes taking turns step by step (scripts/bench-harness.ts), one intra-op thread each,
 * the same allocator settings, outputs compared first.
 *
 * A step is what a caller does: a tensor made from a Float32Array, the forward, the output
 * read back into a Float32Array. The early-exit paths decide with softmax entropy on both
 * sides (onnxruntime: computed in JS on the exit's logits, as its user would):
 *  - stopped: the exit is confident; this library's compiled model stops there, onnxruntime
 *    runs "prefix + branch" exported as its own model;
 *  - not stopped: not confident; this library goes on in the same forward, onnxruntime runs
 *    "prefix + branch, returning the activation too" then "the rest".
 *
 *   npm run bench:peer -- [--models resnet20,mnist_cnn,mobilenet_v2,text_encoder] [--allocator as-installed|glibc|tuned]
 *                         [--steps N] [--json out.json] [--event-loop-only] [--aoti]
 *
 * --aoti: instead, PyTorch's own ahead-of-time compiler (AOTInductor, scripts/bench_aoti.py) on
 * the same exported program, at batch 1, against this library and against onnxruntime
 * (PyTorch 2.6 and later; the first run compiles each model, minutes each).
 */
import * as fs from 'fs';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { EarlyExitModel, Tensor, jit, torch } from '../lib';
import { binding } from '../lib/binding';
import { parseBranchSpec } from '../lib/torch/branch-spec';
import { packageRoot } from '../lib/util/package-root';
import { Environment, Pair, Side, allocatorSetting, describeEnvironment, ratioTable, runPairs, serveSide } from './bench-harness';
import { spamSplit } from './bench-transformers';
import { OrtSession, createSingleThreadSession, loadOnnxRuntimeWithInfo } from './peer-runtime';
import { flagValue, jsonFile, positiveInt } from './script-args';

interface PeerModel {
  exitPoint: string;
  /** The backbone exported by torch.export (.pt2), where the PyTorch had it (2.6 and later). */
  exported: string | null;
  branch: string[];
  inputShape: number[];
  files: Record<'backbone' | 'branchStateDict' | 'full' | 'prefixBranch' | 'prefixBranchScript' | 'prefixExit' | 'rest', string>;
}

/** The transformer fixture's text encoder: its full forward only. */
interface PeerTextEncoder {
  files: Record<'backbone' | 'full', string>;
  exported: string | null;
}

interface Manifest { torchVersion: string; models: Record<string, PeerModel>; textEncoder?: PeerTextEncoder }

const TEXT = 'text_encoder';

const ALWAYS = 100; // entropy is at most ln(classes): every sample meets it
const NEVER = -1; // entropy is never negative: no sample meets it

/** The peer models for the PyTorch that `python` has, made once and kept. */
function peerModels(): { dir: string; manifest: Manifest } {
  const python = process.env.PYTHON ?? '/usr/bin/python3';
  const version = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  if (version.status !== 0) throw new Error(`bench:peer needs PyTorch for ${python} to export the models: ${version.stderr}`);
  const dir = path.join(packageRoot(), 'build', `peer-models-${version.stdout.trim().replace(/[^\w.+-]/g, '_')}`);
  const made = path.join(dir, 'manifest.json');
  // A manifest from before the text encoder was added is made again.
  if (!fs.existsSync(made) || !(JSON.parse(fs.readFileSync(made, 'utf8')) as Manifest).textEncoder) {
    const result = spawnSync(python, [path.join(packageRoot(), 'scripts', 'peer_models.py'), dir], { stdio: 'inherit' });
    if (result.status !== 0) throw new Error('scripts/peer_models.py failed');
  }
  return { dir, manifest: JSON.parse(fs.readFileSync(made, 'utf8')) as Manifest };
}

/** The same input on both sides: a seeded normal sample (speed does not depend on the data). */
function input(shape: number[]): Float32Array {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  let state = 0x9e3779b9;
  const uniform = () => {
    state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
    return ((state >>> 0) + 0.5) / 4294967296;
  };
  for (let i = 0; i < data.length; i++) data[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return data;
}

/** Whether every row of `logits` [batch, classes] has softmax entropy at most `threshold`. */
function allConfident(logits: Float32Array, batch: number, threshold: number): boolean {
  const classes = logits.length / batch;
  for (let row = 0; row < batch; row++) {
    let max = -Infinity;
    for (let c = 0; c < classes; c++) max = Math.max(max, logits[row * classes + c]);
    let sum = 0;
    for (let c = 0; c < classes; c++) sum += Math.exp(logits[row * classes + c] - max);
    let entropy = 0;
    for (let c = 0; c < classes; c++) {
      const p = Math.exp(logits[row * classes + c] - max) / sum;
      if (p > 0) entropy -= p * Math.log(p);
    }
    if (entropy > threshold) return false;
  }
  return true;
}

type LibPath = 'full' | 'eager' | 'stopped' | 'notStopped' | 'handCut' | 'exported' | 'exportedCompiled' | 'exportedStopped';
type OrtPath = 'full' | 'stopped' | 'notStopped';

interface SideOptions { model: string; batch: number; path: string }

async function librarySide(options: Record<string, unknown>): Promise<Side> {
  const { model: name, batch, path: which } = options as unknown as SideOptions & { path: LibPath };
  const { dir, manifest } = peerModels();
  const model = manifest.models[name];
  torch.setNumThreads(Number(process.env.OMP_NUM_THREADS ?? 1));
  const shape = [batch, ...model.inputShape];
  const data = input(shape);
  let run: (x: Tensor) => Tensor;
  let compiled = 'not compiled';
  // The backbone as TorchScript, or as the exported program where the path says so.
  const backbone = () => (which.startsWith('exported') ? torch.export.load(path.join(dir, model.exported!)) : jit.load(path.join(dir, model.files.backbone)));
  if (which === 'exported') {
    // The exported program in this library's interpreter, not compiled.
    const module = backbone().eval();
    compiled = 'exported program, interpreted';
    run = (x) => module.forward(x) as Tensor;
  } else if (which === 'exportedCompiled') {
    const module = jit.optimizeForInference(backbone().eval());
    compiled = `exported program, ${module.inferenceOptimization}`;
    run = (x) => module.forward(x) as Tensor;
  } else if (which === 'full' || which === 'eager' || which === 'handCut') {
    const file = path.join(dir, which === 'handCut' ? model.files.prefixBranchScript : model.files.backbone);
    const loaded = jit.load(file).eval();
    const module = which === 'eager' ? loaded : jit.optimizeForInference(loaded);
    compiled = module.inferenceOptimization ?? compiled;
    run = (x) => module.forward(x) as Tensor;
  } else {
    const branch = parseBranchSpec(model.branch.join(','));
    branch.loadStateDict(torch.load(path.join(dir, model.files.branchStateDict)) as Record<string, Tensor>);
    const early = new EarlyExitModel(backbone(), [[model.exitPoint, branch]]).eval().optimizeForInference();
    compiled = `${which === 'exportedStopped' ? 'exported program, ' : ''}${early.inferenceOptimization!}`;
    const stop = which !== 'notStopped';
    const policy = { criterion: 'entropy' as const, thresholds: [stop ? ALWAYS : NEVER] };
    run = (x) => {
      const result = early.forwardEarlyExit(x, policy);
      if (result.exit !== (stop ? 0 : 1)) throw new Error(`expected exit ${stop ? 0 : 1}, took ${result.exit}`);
      return result.output;
    };
  }
  const once = (): Float32Array => torch.noGrad(() => torch.tidy(() => {
    const output = run(torch.tensor(data, { shape }));
    return output.data() as Float32Array;
  }));
  return {
    step: () => { once(); },
    output: () => Array.from(once()),
    describe: `torch-early-exit on LibTorch ${torch.version.libtorch}, ${torch.getNumThreads()} thread(s), compiled: ${compiled}`,
  };
}

async function peerSide(options: Record<string, unknown>): Promise<Side> {
  const { model: name, batch, path: which } = options as unknown as SideOptions & { path: OrtPath };
  const { dir, manifest } = peerModels();
  const model = manifest.models[name];
  const { ort, version } = await loadOnnxRuntimeWithInfo();
  const session = (file: string): Promise<OrtSession> => createSingleThreadSession(ort, path.join(dir, file));
  const shape = [batch, ...model.inputShape];
  const data = input(shape);
  let run: () => Promise<Float32Array>;
  if (which === 'full') {
    const full = await session(model.files.full);
    run = async () => (await full.run({ input: new ort.Tensor('float32', data, shape) })).output.data as Float32Array;
  } else if (which === 'stopped') {
    const prefix = await session(model.files.prefixBranch);
    run = async () => {
      const exit = (await prefix.run({ input: new ort.Tensor('float32', data, shape) })).exit.data as Float32Array;
      if (!allConfident(exit, batch, ALWAYS)) throw new Error('expected the exit to be taken');
      return exit;
    };
  } else {
    const prefix = await session(model.files.prefixExit);
    const rest = await session(model.files.rest);
    run = async () => {
      const first = await prefix.run({ input: new ort.Tensor('float32', data, shape) });
      if (allConfident(first.exit.data as Float32Array, batch, NEVER)) throw new Error('expected the exit not to be taken');
      return (await rest.run({ activation: first.activation })).output.data as Float32Array;
    };
  }
  return {
    step: async () => { await run(); },
    output: async () => Array.from(await run()),
    describe: `onnxruntime-node ${version}, intraOpNumThreads 1, graph optimization 'all'`,
  };
}

/**
 * The text encoder's input: held-out e-mails as the tokenizer makes them. Batch 1: the e-mail
 * of median length (no padding); a larger batch: the first e-mails of the report half, padded
 * to their longest.
 */
function textInput(batch: number): { data: BigInt64Array; shape: number[]; describe: string } {
  const { test, calibration, tokenizer } = spamSplit();
  if (batch === 1) {
    const byLength = test.map((email) => tokenizer.encode(email.text)).sort((a, b) => a.length - b.length);
    const ids = byLength[Math.floor(byLength.length / 2)];
    return { data: BigInt64Array.from(ids, BigInt), shape: [1, ids.length], describe: `one e-mail of ${ids.length} tokens` };
  }
  const { inputIds } = tokenizer.encodeBatch(test.slice(calibration, calibration + batch).map((email) => email.text));
  const data = inputIds.data() as BigInt64Array;
  const padding = data.filter((id) => id === 0n).length;
  return { data, shape: inputIds.shape, describe: `${batch} e-mails padded to ${inputIds.shape[1]} tokens (${(100 * padding / data.length).toFixed(0)}% padding)` };
}

type TextPath = 'compiled' | 'exported';

async function textLibrarySide(options: Record<string, unknown>): Promise<Side> {
  const { batch, path: which } = options as { batch: number; path: TextPath };
  const { dir, manifest } = peerModels();
  const files = manifest.textEncoder!;
  torch.setNumThreads(Number(process.env.OMP_NUM_THREADS ?? 1));
  const { data, shape, describe } = textInput(batch);
  const module = which === 'exported'
    ? torch.export.load(path.join(dir, files.exported!)).eval()
    : jit.optimizeForInference(jit.load(path.join(dir, files.files.backbone)).eval());
  const compiled = which === 'exported' ? 'exported program, interpreted' : module.inferenceOptimization;
  const once = (): Float32Array => torch.noGrad(() => torch.tidy(() => (module.forward(torch.tensor(data, { shape })) as Tensor).data() as Float32Array));
  return {
    step: () => { once(); },
    output: () => Array.from(once()),
    describe: `torch-early-exit on LibTorch ${torch.version.libtorch}, ${torch.getNumThreads()} thread(s), ${compiled}; ${describe}`,
  };
}

async function textPeerSide(options: Record<string, unknown>): Promise<Side> {
  const { batch } = options as { batch: number };
  const { dir, manifest } = peerModels();
  const { ort, version } = await loadOnnxRuntimeWithInfo();
  const session = await createSingleThreadSession(ort, path.join(dir, manifest.textEncoder!.files.full));
  const { data, shape } = textInput(batch);
  const run = async () => (await session.run({ input_ids: new ort.Tensor('int64', data, shape) })).output.data as Float32Array;
  return {
    step: async () => { await run(); },
    output: async () => Array.from(await run()),
    describe: `onnxruntime-node ${version}, intraOpNumThreads 1, graph optimization 'all'`,
  };
}

serveSide({ library: librarySide, peer: peerSide, textLibrary: textLibrarySide, textPeer: textPeerSide });

/** The text encoder's full forward against onnxruntime's: compiled TorchScript, and the exported program where there is one. */
function textPairs(steps: number, exported: boolean): Pair[] {
  const lib = (p: TextPath, batch: number) => ({ factory: 'textLibrary', options: { batch, path: p } });
  const ort = (batch: number) => ({ factory: 'textPeer', options: { batch } });
  const one = { steps, warmup: 5, repeat: 20, tolerance: 1e-4 };
  const batched = { steps: 20, warmup: 3, tolerance: 1e-4 };
  return [
    { name: `${TEXT}: full forward (optimizeForInference), batch 1`, a: lib('compiled', 1), b: ort(1), ...one },
    { name: `${TEXT}: full forward (optimizeForInference), batch 32`, a: lib('compiled', 32), b: ort(32), ...batched },
    ...(exported ? [
      { name: `${TEXT}: exported program (interpreted), batch 1`, a: lib('exported', 1), b: ort(1), ...one },
      { name: `${TEXT}: exported program (interpreted), batch 32`, a: lib('exported', 32), b: ort(32), ...batched },
    ] : []),
  ];
}

async function printEventLoop(model: string): Promise<Array<{ side: string; ticks: number; ms: number }>> {
  const ticks = await eventLoopTicks(model, 20);
  console.log(`event loop during 20 concurrent ${model} batch-64 forwards (ticks of a 1 ms interval):`);
  for (const { side, ticks: n, ms } of ticks) console.log(`  ${side}: ${n} ticks in ${ms.toFixed(0)} ms (${(1000 * n / ms).toFixed(0)} a second)`);
  return ticks;
}

/**
 * How much of the event loop each side leaves to others while it works: ticks of a 1 ms
 * interval during `concurrent` batch-64 forwards started at once (this library's
 * forwardAsync runs them on worker threads; onnxruntime-node's session.run on the main thread).
 */
async function eventLoopTicks(model: string, concurrent: number): Promise<Array<{ side: string; ticks: number; ms: number }>> {
  const { dir, manifest } = peerModels();
  const entry = manifest.models[model];
  const shape = [64, ...entry.inputShape];
  const data = input(shape);
  const measure = async (side: string, start: () => Promise<unknown>) => {
    await start(); // warm up
    let ticks = 0;
    const interval = setInterval(() => { ticks++; }, 1);
    const started = process.hrtime.bigint();
    await Promise.all(Array.from({ length: concurrent }, start));
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    clearInterval(interval);
    return { side, ticks, ms };
  };
  torch.setNumThreads(1);
  const optimized = jit.optimizeForInference(jit.load(path.join(dir, entry.files.backbone)).eval());
  const library = await measure('torch-early-exit forwardAsync', async () => {
    const x = torch.tensor(data, { shape });
    const output = await torch.noGradAsync(() => optimized.forwardAsync(x)) as Tensor;
    output.data();
    output.dispose();
    x.dispose();
  });
  const { ort } = await loadOnnxRuntimeWithInfo();
  const session = await createSingleThreadSession(ort, path.join(dir, entry.files.full));
  const peer = await measure('onnxruntime-node session.run', async () => {
    (await session.run({ input: new ort.Tensor('float32', data, shape) })).output.data;
  });
  return [library, peer];
}

function pairsFor(model: string, steps: number, exported: boolean): Pair[] {
  const lib = (p: LibPath, batch: number) => ({ factory: 'library', options: { model, batch, path: p } });
  const ort = (p: OrtPath, batch: number) => ({ factory: 'peer', options: { model, batch, path: p } });
  const big = model === 'mobilenet_v2';
  // A step of many short calls: the first call after the other side ran meets cold caches,
  // which would otherwise weigh on small models more than their own speed does.
  const one = { steps: big ? Math.ceil(steps / 2) : steps, warmup: 5, repeat: big ? 5 : 100, tolerance: 1e-4 };
  const batched = { steps: big ? 10 : 40, warmup: big ? 3 : 5, tolerance: 1e-4 };
  return [
    { name: `${model}: full forward, batch 1`, a: lib('full', 1), b: ort('full', 1), ...one },
    { name: `${model}: full forward, batch 64`, a: lib('full', 64), b: ort('full', 64), ...batched },
    { name: `${model}: stopped exit vs ORT prefix+branch, batch 1`, a: lib('stopped', 1), b: ort('stopped', 1), ...one },
    { name: `${model}: stopped exit vs ORT full forward, batch 1`, a: lib('stopped', 1), b: ort('full', 1), ...one, tolerance: undefined },
    { name: `${model}: not stopped vs ORT prefix+branch then rest, batch 1`, a: lib('notStopped', 1), b: ort('notStopped', 1), ...one },
    { name: `${model}: eager forward (no optimizeForInference), batch 1`, a: lib('eager', 1), b: ort('full', 1), ...one },
    ...(exported ? [
      { name: `${model}: exported program (interpreted), batch 1`, a: lib('exported', 1), b: ort('full', 1), ...one },
      { name: `${model}: exported program (interpreted), batch 64`, a: lib('exported', 64), b: ort('full', 64), ...batched },
      { name: `${model}: exported program (optimizeForInference), batch 1`, a: lib('exportedCompiled', 1), b: ort('full', 1), ...one },
      { name: `${model}: exported program (optimizeForInference), batch 64`, a: lib('exportedCompiled', 64), b: ort('full', 64), ...batched },
      { name: `${model}: exported program, stopped exit vs ORT prefix+branch, batch 1`, a: lib('exportedStopped', 1), b: ort('stopped', 1), ...one },
    ] : []),
  ];
}

/**
 * The exported program against TorchScript on the same weights: its interpreter against
 * TorchScript's plain interpreter (the `eager` path: jit.load without optimizeForInference),
 * and both compiled by optimizeForInference.
 */
function exportedPairs(model: string, steps: number): Pair[] {
  const lib = (p: LibPath, batch: number) => ({ factory: 'library', options: { model, batch, path: p } });
  const big = model === 'mobilenet_v2';
  const one = { steps: big ? Math.ceil(steps / 2) : steps, warmup: 5, repeat: big ? 5 : 100, tolerance: 1e-4 };
  const batched = { steps: big ? 10 : 40, warmup: big ? 3 : 5, tolerance: 1e-4 };
  return [
    { name: `${model}: exported (interpreted) vs TorchScript plain interpreter, batch 1`, a: lib('exported', 1), b: lib('eager', 1), ...one },
    { name: `${model}: exported (interpreted) vs TorchScript plain interpreter, batch 64`, a: lib('exported', 64), b: lib('eager', 64), ...batched },
    { name: `${model}: exported vs TorchScript, both optimizeForInference, batch 1`, a: lib('exportedCompiled', 1), b: lib('full', 1), ...one },
    { name: `${model}: exported vs TorchScript, both optimizeForInference, batch 64`, a: lib('exportedCompiled', 64), b: lib('full', 64), ...batched },
  ];
}

/** AOTInductor on the model's exported program, at batch 1: against this library's compiled forward, and against onnxruntime. */
function aotiPairs(model: string, steps: number, dir: string, entry: PeerModel): Pair[] {
  const big = model === 'mobilenet_v2';
  const aoti = { factory: 'aoti', options: { pt2: path.join(dir, entry.exported!), batch: 1, inputShape: entry.inputShape, threads: 1 },
    python: { script: path.join(packageRoot(), 'scripts', 'bench_aoti.py') } };
  const one = { steps: big ? Math.ceil(steps / 2) : steps, warmup: 5, repeat: big ? 5 : 100, tolerance: 1e-4 };
  return [
    { name: `${model}: full forward vs AOTInductor, batch 1`, a: { factory: 'library', options: { model, batch: 1, path: 'full' } }, b: aoti, ...one },
    { name: `${model}: AOTInductor vs onnxruntime, batch 1`, a: aoti, b: { factory: 'peer', options: { model, batch: 1, path: 'full' } }, ...one },
  ];
}

function handCutPairs(model: string, steps: number): Pair[] {
  const lib = (p: LibPath) => ({ factory: 'library', options: { model, batch: 1, path: p } });
  const big = model === 'mobilenet_v2';
  return [{ name: `${model}: stopped exit vs the same prefix+branch compiled alone, batch 1`, a: lib('stopped'), b: lib('handCut'),
    steps: big ? Math.ceil(steps / 2) : steps, warmup: 5, repeat: big ? 5 : 100, tolerance: 1e-4 }];
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (name: string) => flagValue(args, name);
  const named = (flag('--models') ?? `resnet20,mnist_cnn,mobilenet_v2,${TEXT}`).split(',');
  const models = named.filter((m) => m !== TEXT);
  const allocator = allocatorSetting(flag('--allocator'), 'as-installed');
  const steps = flag('--steps') === undefined ? 60 : positiveInt('--steps', flag('--steps'));
  const json = args.includes('--json') ? jsonFile(flag('--json')) : undefined;
  const environment: Environment = { threads: 1, allocator };
  const { manifest } = peerModels();
  for (const model of models) if (!manifest.models[model]) throw new Error(`unknown model '${model}' (${Object.keys(manifest.models).join(', ')})`);
  const { version } = await loadOnnxRuntimeWithInfo();
  console.log(`bench:peer: torch-early-exit on LibTorch ${torch.version.libtorch} against onnxruntime-node ${version}; models exported by PyTorch ${manifest.torchVersion}`);
  console.log(describeEnvironment(environment));
  console.log('ratio < 1: this library is faster. Each ratio pairs one step of each side, in turns.\n');
  const script = __filename;
  if (args.includes('--event-loop-only')) {
    if (models.length === 0) throw new Error('--event-loop-only needs one of the CNNs in --models');
    await printEventLoop(models[0]);
    return;
  }
  const exported = models.filter((m) => manifest.models[m].exported);
  if (args.includes('--aoti')) {
    if (exported.length === 0) throw new Error(`--aoti: PyTorch ${manifest.torchVersion} made no exported programs (2.6 and later do)`);
    const { dir } = peerModels();
    const aoti = await runPairs(script, exported.flatMap((m) => aotiPairs(m, steps, dir, manifest.models[m])), environment, (line) => console.error(line));
    console.log(ratioTable(aoti, 'a', 'b'));
    console.log(`sides: ${[...new Set(aoti.flatMap((r) => [r.aDescribe, r.bDescribe]))].join('; ')}`);
    if (json) fs.writeFileSync(json, JSON.stringify({ libtorch: torch.version.libtorch, onnxruntime: version, environment, aoti }, null, 2) + '\n');
    return;
  }
  const pairs = models.flatMap((m) => pairsFor(m, steps, manifest.models[m].exported !== null && manifest.models[m].exported !== undefined));
  if (named.includes(TEXT)) pairs.push(...textPairs(steps, Boolean(manifest.textEncoder!.exported)));
  const peer = await runPairs(script, pairs, environment, (line) => console.error(line));
  console.log(ratioTable(peer, 'library', 'onnxruntime'));
  const compiledWith = [...new Set(peer.map((r) => r.aDescribe))].join('; ');
  console.log(`library sides: ${compiledWith}`);
  const problem = binding.oneDnnInferenceProblem();
  if (problem) console.log(`optimizeForInference ran without oneDNN here: ${problem}`);
  console.log('');
  const cut = await runPairs(script, models.flatMap((m) => handCutPairs(m, steps)), environment, (line) => console.error(line));
  if (cut.length > 0) console.log(ratioTable(cut, 'exit', 'hand-cut'));
  console.log('');

  const interpreter = exported.length > 0
    ? await runPairs(script, exported.flatMap((m) => exportedPairs(m, steps)), environment, (line) => console.error(line))
    : [];
  if (exported.length > 0) {
    console.log(ratioTable(interpreter, 'exported', 'TorchScript'));
    console.log('');
  } else if (models.length > 0) {
    console.log(`no exported programs: PyTorch ${manifest.torchVersion} made none (torch.export's .pt2 needs 2.6 or later)\n`);
  }
  const ticks = models.length > 0 ? await printEventLoop(models[0]) : [];
  if (json) fs.writeFileSync(json, JSON.stringify({ libtorch: torch.version.libtorch, onnxruntime: version, environment, peer, handCut: cut, exportedVsTorchScript: interpreter, eventLoop: ticks }, null, 2) + '\n');
}

if (process.env.TEE_BENCH_SIDE !== '1') {
  main().catch((error) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
