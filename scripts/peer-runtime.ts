/**
 * onnxruntime-node for the peer benchmark, installed on demand outside this package's
 * dependencies: into TEE_PEER_CACHE (default ~/.cache/torch-early-exit/peer), one folder
 * per version, with
 *
 *   npm install --prefix DIR --no-save --no-audit --no-fund --no-package-lock --ignore-scripts onnxruntime-node@VERSION
 *
 * and then required from there. The npm package carries the CPU library for Linux x64 and
 * arm64, macOS and Windows (bin/napi-v6/<platform>/<arch>/); its postinstall script only
 * downloads the CUDA execution provider's libraries, so it is not run (--ignore-scripts,
 * and ONNXRUNTIME_NODE_INSTALL=skip for good measure).
 *
 * TEE_PEER_ORT_VERSION overrides the pinned version.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { createRequire } from 'module';
import * as os from 'os';
import * as path from 'path';

/** Checked on Node 20 (Debian 12 host and Debian 13 root): loads and runs the peer models. */
export const ONNXRUNTIME_NODE_VERSION = '1.30.0';

/** The few members of onnxruntime-node that the peer benchmark uses. */
export interface OrtTensor {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: unknown;
  dispose?(): void;
}

export type OrtFeeds = Record<string, OrtTensor>;

export interface OrtSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: OrtFeeds): Promise<Record<string, OrtTensor>>;
  release?(): Promise<void>;
}

export interface OrtSessionOptions {
  intraOpNumThreads?: number;
  interOpNumThreads?: number;
  executionMode?: 'sequential' | 'parallel';
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  executionProviders?: string[];
  [option: string]: unknown;
}

export interface OnnxRuntime {
  InferenceSession: { create(file: string, options?: OrtSessionOptions): Promise<OrtSession> };
  Tensor: {
    new (type: 'float32', data: Float32Array, dims: readonly number[]): OrtTensor;
    new (type: 'int64', data: BigInt64Array, dims: readonly number[]): OrtTensor;
  };
  env?: { versions?: { common?: string; node?: string } };
}

export interface LoadedRuntime {
  ort: OnnxRuntime;
  /** The version of the onnxruntime-node package that was loaded. */
  version: string;
  /** Where it was installed. */
  dir: string;
  /** Whether this call installed it (false: found in the cache). */
  installed: boolean;
}

export function peerCacheDir(): string {
  return process.env.TEE_PEER_CACHE || path.join(os.homedir(), '.cache', 'torch-early-exit', 'peer');
}

function installedVersion(dir: string): string | undefined {
  try {
    const file = path.join(dir, 'node_modules', 'onnxruntime-node', 'package.json');
    return JSON.parse(fs.readFileSync(file, 'utf8')).version as string;
  } catch {
    return undefined;
  }
}

/** Installs onnxruntime-node (when not yet in the cache) and loads it. Prints one line to stderr. */
export async function loadOnnxRuntimeWithInfo(): Promise<LoadedRuntime> {
  const version = process.env.TEE_PEER_ORT_VERSION || ONNXRUNTIME_NODE_VERSION;
  const dir = path.join(peerCacheDir(), `onnxruntime-node-${version}`);
  let installed = false;
  if (installedVersion(dir) !== version) {
    fs.mkdirSync(dir, { recursive: true });
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const args = ['install', '--prefix', dir, '--no-save', '--no-audit', '--no-fund', '--no-package-lock',
      '--ignore-scripts', `onnxruntime-node@${version}`];
    try {
      // npm's own output goes to stderr, so that a benchmark's stdout stays clean.
      execFileSync(npm, args, {
        stdio: ['ignore', process.stderr, process.stderr],
        env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', ONNXRUNTIME_NODE_INSTALL_CUDA: 'skip' },
        shell: process.platform === 'win32',
      });
    } catch (e) {
      throw new Error(`could not install onnxruntime-node@${version} into ${dir} (${npm} ${args.join(' ')}): ` +
        `${(e as Error).message}`);
    }
    if (installedVersion(dir) !== version) {
      throw new Error(`npm install did not leave onnxruntime-node@${version} in ${dir}`);
    }
    installed = true;
  }
  const requireFromDir = createRequire(path.join(dir, 'package.json'));
  let ort: OnnxRuntime;
  try {
    ort = requireFromDir('onnxruntime-node') as OnnxRuntime;
  } catch (e) {
    throw new Error(`onnxruntime-node@${version} in ${dir} does not load on ${process.platform}-${process.arch} ` +
      `(Node ${process.versions.node}): ${(e as Error).message}`);
  }
  const loaded = ort.env?.versions?.node ?? installedVersion(dir) ?? version;
  process.stderr.write(`onnxruntime-node ${loaded}: ${installed ? 'installed into' : 'found in'} ${dir}\n`);
  return { ort, version: loaded, dir, installed };
}

/** onnxruntime-node, installed on demand into the peer cache (see loadOnnxRuntimeWithInfo). */
export async function loadOnnxRuntime(): Promise<OnnxRuntime> {
  return (await loadOnnxRuntimeWithInfo()).ort;
}

/** The benchmark's session settings: one intra-op and one inter-op thread, sequential
 * execution, every graph optimization; CPU execution provider. */
export const SINGLE_THREAD_OPTIONS: Readonly<OrtSessionOptions> = Object.freeze({
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
  executionProviders: ['cpu'],
});

export function createSingleThreadSession(ort: OnnxRuntime, file: string,
  extra: OrtSessionOptions = {}): Promise<OrtSession> {
  return ort.InferenceSession.create(file, { ...SINGLE_THREAD_OPTIONS, ...extra });
}

/** A float32 tensor for a session's feeds. */
export function floatTensor(ort: OnnxRuntime, data: Float32Array, dims: readonly number[]): OrtTensor {
  return new ort.Tensor('float32', data, dims);
}
