/** Shared by the suites: fixture paths and reference data written by scripts/make_fixtures.py. */
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, Tensor, exitDecisions, exitScores, jit, nn, torch } from '../lib';
import { InferenceOptimization, binding } from '../lib/binding';

export const FIXTURES = path.join(__dirname, 'fixtures');

export function fixture(name: string): string {
  return path.join(FIXTURES, name);
}

export interface RefTensor {
  shape: number[];
  dtype: 'float32' | 'int64';
  data: number[];
}

const cache = new Map<string, unknown>();

/** A reference JSON file, parsed once per suite. */
export function reference<T = any>(name: string): T {
  if (!cache.has(name)) cache.set(name, JSON.parse(fs.readFileSync(fixture(name), 'utf8')));
  return cache.get(name) as T;
}

/**
 * What optimizeForInference applies with `optimize` left out: oneDNN chains where the addon
 * has them (oneDNN 3: LibTorch 2.6 and later, pinned by test/onednn-chains.test.ts), else
 * optimize_for_inference where it runs, else freezing only.
 */
export function defaultOptimization(): InferenceOptimization {
  if (binding.oneDnnChainsProblem() === '') return 'oneDNN chains';
  return binding.oneDnnInferenceProblem() === '' ? 'oneDNN' : 'frozen';
}

/** The TorchScript file of `torch.nn.Module` subclass `name` with `body`, scripted in eval mode by Python (which reads the class's source, so from a file). */
export function scriptedInPython(name: string, body: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-scripted-'));
  const file = path.join(dir, `${name}.pt`);
  fs.writeFileSync(path.join(dir, `${name}.py`), `import torch\nclass ${name}(torch.nn.Module):${body}\ntorch.jit.save(torch.jit.script(${name}().eval()), '${file}')\n`);
  execFileSync(pythonWithTorch(), [path.join(dir, `${name}.py`)], { stdio: 'ignore' });
  return file;
}

export function fromRef(ref: RefTensor): Tensor {
  const data = ref.dtype === 'int64' ? new BigInt64Array(ref.data.map(BigInt)) : new Float32Array(ref.data);
  return torch.tensor(data, { shape: ref.shape });
}

/** The largest absolute difference between a tensor and reference values. */
export function maxAbsDiff(actual: Tensor, expected: RefTensor | Tensor | ArrayLike<number>): number {
  const a = Array.from(actual.data() as ArrayLike<number>, Number);
  const e = expected instanceof Tensor
    ? Array.from(expected.data() as ArrayLike<number>, Number)
    : 'data' in (expected as RefTensor) ? (expected as RefTensor).data : Array.from(expected as ArrayLike<number>);
  if (expected instanceof Tensor) expect(actual.shape).toEqual(expected.shape);
  else if ('shape' in (expected as RefTensor)) expect(actual.shape).toEqual((expected as RefTensor).shape);
  expect(a.length).toBe(e.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - e[i]));
  return worst;
}

const [libtorchMajor, libtorchMinor] = torch.version.libtorch.split('.').map(Number);
/** Whether this LibTorch loads exported programs (torch.export): 2.6 and later. */
export const CAN_EXPORT = libtorchMajor > 2 || (libtorchMajor === 2 && libtorchMinor >= 6);

let chosenPython: string | undefined;

/**
 * The python3 that made the fixtures: Debian's /usr/bin/python3 with python3-torch, else the
 * first python3 on PATH with torch (a pip PyTorch), as scripts/fixtures.js chooses. Asked once,
 * on first use: importing torch takes seconds.
 */
export function pythonWithTorch(): string {
  const { spawnSync } = require('child_process') as typeof import('child_process');
  chosenPython ??= ['/usr/bin/python3', 'python3'].find((python) => spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0)
    ?? '/usr/bin/python3';
  return chosenPython;
}

/** Runs the fixtures' python3 with torch on a script; returns stdout. */
export function python(code: string): string {
  const { execFileSync } = require('child_process') as typeof import('child_process');
  return execFileSync(pythonWithTorch(), ['-c', code], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The seed's exit branch, with the weights the Python reference used. */
export function seedBranch(): nn.Sequential {
  const branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
  const state = reference('resnet20_reference.json').exit.branch_state_dict;
  branch.loadStateDict({ '2.weight': fromRef(state['2.weight']), '2.bias': fromRef(state['2.bias']) });
  return branch;
}

/** Writes `file` until its file system is full; the write that fails must fail with ENOSPC. */
export function fillDisk(file: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (;;) fs.writeSync(fd, Buffer.alloc(4096, 1));
  } catch (error) {
    expect((error as NodeJS.ErrnoException).code).toBe('ENOSPC');
  } finally {
    fs.closeSync(fd);
  }
}

/** The MNIST CNN with a seeded exit after each of its two blocks, in eval mode. */
export function mnistTwoExits(backbone: 'torchscript' | 'exported' = 'torchscript'): EarlyExitModel {
  torch.manualSeed(0);
  const loaded = backbone === 'exported' ? torch.export.load(fixture('mnist_cnn_exported.pt2')) : jit.load(fixture('mnist_cnn.pt'));
  return new EarlyExitModel(loaded, [
    ['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))],
    ['features2', nn.Sequential(nn.Flatten(), nn.Linear(3136, 10))],
  ]).eval();
}

/**
 * Sixteen seeded inputs, every output of `model` on them, each exit's median entropy (between
 * its eighth and ninth) as its threshold, and the exit each sample takes with those thresholds (all three outputs used).
 */
export function medianEntropySplit(model: EarlyExitModel): { x: Tensor; outputs: Tensor[]; thresholds: number[]; expected: number[] } {
  torch.manualSeed(1);
  const x = torch.randn([16, 1, 28, 28]);
  const outputs = torch.noGrad(() => model.forward(x));
  const scores = exitScores(outputs, 'entropy');
  // The mean of the two middle scores: on no sample's score, which a compiled model or another
  // batch size gives within 1e-5, not bit for bit.
  const median = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return (sorted[values.length / 2 - 1] + sorted[values.length / 2]) / 2;
  };
  const thresholds = [median(scores[0]), median(scores[1])];
  const expected = exitDecisions(scores, 'entropy', thresholds);
  expect(new Set(expected).size).toBe(3);
  return { x, outputs, thresholds, expected };
}

/**
 * `torch-early-exit serve ARGS` in its own process: resolves once it listens, with its URL, what
 * it has printed so far, and a stop that sends SIGINT and resolves to its exit code.
 */
export async function startServe(args: string[]): Promise<{ url: string; log: string; child: ChildProcess; stop: () => Promise<number | null> }> {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'bin', 'torch-early-exit.js'), 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      log += chunk.toString();
      const found = /on (http:\/\/[^:]+:\d+)/.exec(log);
      if (found) resolve(found[1]);
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${log}`)));
  });
  return { url, log, child, stop: () => { child.kill('SIGINT'); return exited; } };
}
