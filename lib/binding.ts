/**
 * The one typed seam between TypeScript and the native addon: the only file that loads
 * the `.node` binary, and the declaration of everything it exports.
 */
import * as path from 'path';
import { baseVersion, chooseBinary, findRuntimeLibTorch, missingLibraryRemedy, preloadLibTorch } from './libtorch';
import { packageRoot } from './util/package-root';

/** A JS value that crosses into TorchScript: tensors, numbers, strings, nested arrays and dicts. */
export type NativeValue = unknown;

export interface NativeTensor {
  shape(): number[];
  dtype(): string;
  device(): string;
  requiresGrad(): boolean;
  setRequiresGrad(requiresGrad: boolean): void;
  grad(): NativeTensor | null;
  setGrad(grad: NativeTensor | null): void;
  isLeaf(): boolean;
  /** The elements' raw bytes, row-major, in the tensor's own dtype (torch.save's storage bytes). */
  bytes(): Buffer;
  data(): Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array | Uint8Array;
  item(): number | boolean;
  backward(gradient?: NativeTensor | null, retainGraph?: boolean): void;
  dispose(): void;
  isDisposed(): boolean;
  sameAs(other: NativeTensor): boolean;
  /** Tells V8 the memory whose report waited while the tensor was inside torch.tidy. */
  reportMemory(): void;
}

/**
 * [output (null when a hook stopped the call: its output is the hook's), [[hookId, hookOutput], ...], the hook that stopped the call or null,
 *  [[hookId, inputPositions, exitRows], ...] of samples that left early,
 *  the input positions of the samples still in the batch at the end, or null while all are]
 */
export type NativeCallResult = [NativeValue, Array<[number, NativeValue]>, number | null,
  Array<[number, NativeTensor, NativeTensor]>, NativeTensor | null];

/**
 * [hookId, rule, threshold, perSample?]: the hook's output ends the call when every sample
 * meets the rule; with perSample, the samples that meet it leave the batch there.
 */
export type NativeStopRule = [number, 'entropy' | 'maxProbability' | 'margin' | 'patience', number, boolean?];

/**
 * How a model was compiled for inference: frozen then lowered to oneDNN primitive chains,
 * frozen then converted by optimize_for_inference, or frozen only.
 */
export type InferenceOptimization = 'oneDNN chains' | 'oneDNN' | 'frozen';

export interface NativeScriptModule {
  /** With `inference`, the root's forward runs the model compiled by `compileForInference`. */
  runMethod(method: string, inputs: NativeValue[], stopRules?: NativeStopRule[], inference?: boolean): NativeCallResult;
  /** `onSampleExit(hookId, inputPositions, rows)` is called on the main thread as samples leave the batch. */
  runMethodAsync(method: string, inputs: NativeValue[], stopRules?: NativeStopRule[], inference?: boolean,
    onSampleExit?: (hookId: number, positions: number[], rows: NativeTensor) => void): Promise<NativeCallResult>;
  namedModules(): Array<[string, NativeScriptModule]>;
  namedChildren(): Array<[string, NativeScriptModule]>;
  namedParameters(recurse: boolean): Array<[string, NativeTensor]>;
  namedBuffers(recurse: boolean): Array<[string, NativeTensor]>;
  train(mode: boolean): void;
  isTraining(): boolean;
  to(device: string): void;
  /** The bytes of `torch.jit.save` of this module, made in memory (the caller writes the file). */
  serialize(): Buffer;
  methodNames(): string[];
  methodSchema(method: string): string;
  typeName(): string;
  /** [calls of this module in one forward of the root (-1: in a loop), whether samples can leave the batch after it]. */
  callSites(): [number, boolean];
  programNodesRun(): number;
  registerHook(hook: NativeHook): number;
  removeHook(id: number): boolean;
  /**
   * Compiles the root for inference (frozen; with `optimize`, oneDNN and fusions too) with
   * the hooks of `points` kept as exit points; per point, whether samples can leave the
   * batch alone there (a batch boundary, or every batch-sized value read after it carried),
   * and where they cannot, why.
   */
  compileForInference(points: string[], optimize: boolean | 'chains' | undefined): [boolean[], InferenceOptimization, string[]];
  /** Why a compiled exit at this module could not let samples leave alone ('' when it could). */
  carryProblem(): string;
  dropInference(): void;
  /**
   * Per oneDNN chain of the compiled model (or of this module, when it was made by
   * optimizedCopy), in forward order: per input shape run so far, its primitives as
   * [description, timed runs, nanoseconds].
   */
  oneDnnChains(): Array<Array<{ shape: string; arenaBytes: number; steps: Array<[string, number, number]> }>>;
  /** Times every primitive of those chains from now on (counts reset), or stops (counts kept). */
  timeOneDnnChains(timing: boolean): void;
  /** A new model: this one frozen (and optimized) without hooks, as torch.jit.optimize_for_inference. */
  optimizedCopy(optimize: boolean | 'chains' | undefined): [NativeScriptModule, InferenceOptimization];
  dispose(): void;
  isDisposed(): boolean;
}

/** A forward hook as the addon takes it: a JS function, or a module run natively. */
export type NativeHook = ((inputs: NativeValue[], output: NativeValue) => void) | NativeNnModule | NativeScriptModule;

export interface NativeNnModule {
  forward(input: NativeTensor): NativeTensor;
  namedParameters(recurse: boolean): Array<[string, NativeTensor]>;
  namedBuffers(recurse: boolean): Array<[string, NativeTensor]>;
  namedChildren(): Array<[string, NativeNnModule]>;
  train(mode: boolean): void;
  isTraining(): boolean;
  to(device: string): void;
  typeName(): string;
  dispose(): void;
  isDisposed(): boolean;
}

/**
 * The CPU memory the library's tensors use, as `torch.memoryStats()` reports it (PyTorch's
 * `torch.cuda.memory_stats()` for the CPU block cache).
 */
export interface MemoryStats {
  /** Whether freed large blocks are kept for reuse (TEE_CPU_CACHE_MB=0 turns it off). */
  enabled: boolean;
  /** The most bytes of free blocks the cache keeps (TEE_CPU_CACHE_MB; default a quarter of the machine's memory). */
  limitBytes: number;
  /** Bytes of CPU tensor storage in use now, and the most since the start or the last `resetPeakMemoryStats()`. */
  allocatedBytes: number;
  peakAllocatedBytes: number;
  /** Bytes of free blocks kept for reuse; `emptyCache()` gives them back. */
  cachedBytes: number;
  /** Bytes of large blocks the cache holds, in use or free (rounded to size classes), and their peak. */
  reservedBytes: number;
  peakReservedBytes: number;
  /** Large allocations served from the cache, and those that needed new memory. */
  cacheHits: number;
  cacheMisses: number;
  /** Freed blocks given back at once because the cache was at its limit. */
  releasedOverLimit: number;
}

export interface Binding {
  NativeTensor: abstract new (...args: never[]) => NativeTensor;
  NativeScriptModule: abstract new (...args: never[]) => NativeScriptModule;
  NativeNnModule: abstract new (...args: never[]) => NativeNnModule;
  fromTypedArray(data: ArrayBufferView, shape: number[], dtype?: string): NativeTensor;
  /** A 1-D tensor of `dtype` over a copy of raw little-endian bytes. */
  fromBytes(bytes: Buffer, dtype: string): NativeTensor;
  callOp(name: string, overload: string, args: NativeValue[], kwargs?: Record<string, NativeValue>): NativeValue;
  /** One SGD step of a group (native/nn/optimizer_step.h): per parameter false, true or its new momentum buffer. */
  sgdStep(params: NativeTensor[], buffers: Array<NativeTensor | null>, lr: number, momentum: number, dampening: number,
    weightDecay: number, nesterov: boolean, maximize: boolean): Array<boolean | NativeTensor>;
  /** One Adam step of a group: per parameter false, true or its new [expAvg, expAvgSq]. */
  adamStep(params: NativeTensor[], expAvgs: Array<NativeTensor | null>, expAvgSqs: Array<NativeTensor | null>, steps: number[],
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, decoupled: boolean, maximize: boolean):
    Array<boolean | [NativeTensor, NativeTensor]>;
  /** While true (inside torch.tidy), new tensors tell V8 their memory only when they escape the scope. */
  setMemoryReportsDeferred(deferred: boolean): void;
  /** Loads a TorchScript archive from its bytes; `name` (the file) is for error messages. */
  /** Why the addon cannot lower models to oneDNN chains ('' when it can). */
  oneDnnChainsProblem(): string;
  /** Why optimize_for_inference cannot run with this LibTorch ('' when it can). */
  oneDnnInferenceProblem(): string;
  setTensorExprFuserEnabled(enabled: boolean): void;
  tensorExprFuserEnabled(): boolean;
  loadScriptModule(bytes: Buffer, name: string, device?: string): NativeScriptModule;
  loadExportedProgram(description: object, name: string): NativeScriptModule;
  createNnModule(kind: string, options: Record<string, unknown>, children?: NativeNnModule[]): NativeNnModule;
  /** Bytes in the torch.save format of LibTorch's own pickler (what torch.save wrote before 0.2; tests only). */
  pickleSave(value: NativeValue): Buffer;
  /** c10d (native/distributed/process_group.h): a TCPStore rendezvous and a Gloo group; handles are opaque. */
  createProcessGroup(host: string, port: number, rank: number, worldSize: number, timeoutMs: number): Promise<unknown>;
  destroyProcessGroup(group: unknown): void;
  allReduce(group: unknown, tensor: NativeTensor, op: string): Promise<void>;
  broadcast(group: unknown, tensor: NativeTensor, src: number): Promise<void>;
  allGather(group: unknown, tensor: NativeTensor): Promise<NativeTensor[]>;
  barrier(group: unknown): Promise<void>;
  /** Every tensor from rank `src`, one message per dtype, waited for (blocks). */
  broadcastCoalesced(group: unknown, tensors: NativeTensor[], src: number): void;
  /** DistributedDataParallel's bucketed gradient averaging (native/distributed/gradient_reducer.h). */
  createGradientReducer(group: unknown, params: NativeTensor[], bucketCapBytes: number, firstBucketBytes: number): unknown;
  reducerPrepare(reducer: unknown): void;
  reducerBuckets(reducer: unknown): number[][];
  reducerRemove(reducer: unknown): void;
  /** torch.randperm(n) from a generator seeded with `seed`, the default generator untouched. */
  randpermWithSeed(n: number, seed: number): NativeTensor;
  setNumThreads(threads: number): void;
  getNumThreads(): number;
  /** Gives the CPU block cache's free blocks back to the system; returns the bytes released. */
  emptyCache(): number;
  memoryStats(): MemoryStats;
  resetPeakMemoryStats(): void;
  manualSeed(seed: number): void;
  setGradEnabled(enabled: boolean): void;
  isGradEnabled(): boolean;
  cudaIsAvailable(): boolean;
  cudaDeviceCount(): number;
  /** Reads, or sets then reads, at::globalContext()'s TF32 switch for cuDNN / cuBLAS. */
  allowTF32CuDNN(allow?: boolean): boolean;
  allowTF32CuBLAS(allow?: boolean): boolean;
  /** The LibTorch version the addon was compiled against. */
  libtorchVersion: string;
  /** The version of the LibTorch loaded in the process (from its build configuration). */
  loadedLibtorchVersion: string;
  builtWithCuda: boolean;
  /** Whether the addon was compiled with Gloo's headers, so with `distributed` (CMakeLists.txt). */
  builtWithGloo: boolean;
}

/** The addon binary this process loaded, and why it was the one. */
export interface LoadedBinary {
  file: string;
  reason: string;
  /** The binaries looked at and passed over, each with why. */
  passedOver: string[];
}

let loadedBinary: LoadedBinary | undefined;

function loadBinding(): Binding {
  const root = packageRoot();
  const { found, tried } = findRuntimeLibTorch();
  const choice = chooseBinary(root, found);
  const fix = 'Build one for your LibTorch with `npm run build:native` in the package folder ' +
    '(it needs LibTorch: apt-get install libtorch-dev libopenblas0-pthread, LIBTORCH=/path/to/libtorch, or pip install torch).';
  if (!choice.file) {
    throw new Error(`torch-early-exit: no native addon fits this machine. Looked for:\n  ${choice.refused.join('\n  ')}\n` +
      `LibTorch at run time: ${found ? `${found.version} (${found.flavour}, ${found.kind} at ${found.libDir})` : `none found (${tried.join('; ')})`}\n${fix}`);
  }
  if (found) preloadLibTorch(found);
  loadedBinary = { file: choice.file, reason: choice.reason, passedOver: choice.refused.filter((line) => !line.endsWith(': not built')) };
  if (process.env.TORCH_EARLY_EXIT_VERBOSE) console.error(`torch-early-exit: loading ${choice.file}: ${choice.reason}`);
  let loaded: Binding;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const bindings = require('bindings') as (options: { bindings: string; module_root: string; try: string[][] }) => Binding;
    loaded = bindings({ bindings: path.basename(choice.file), module_root: path.dirname(choice.file), try: [['module_root', 'bindings']] });
  } catch (error) {
    const message = (error as Error).message;
    const remedy = missingLibraryRemedy(message) ?? fix;
    throw new Error(`torch-early-exit: cannot load ${choice.file}: ${message}\n` +
      `LibTorch at run time: ${found ? `${found.version} (${found.flavour}, ${found.kind} at ${found.libDir})` : `none found (${tried.join('; ')})`}\n${remedy}`);
  }
  if (found && loaded.loadedLibtorchVersion && baseVersion(loaded.loadedLibtorchVersion) !== baseVersion(loaded.libtorchVersion)) {
    throw new Error(`torch-early-exit: ${choice.file} was compiled against LibTorch ${loaded.libtorchVersion} ` +
      `but LibTorch ${loaded.loadedLibtorchVersion} is loaded. ${fix}`);
  }
  return loaded;
}

/** The loaded native addon. */
export const binding: Binding = loadBinding();

/** Which addon binary was loaded and why (also printed at load with TORCH_EARLY_EXIT_VERBOSE=1). */
export const binary: LoadedBinary = loadedBinary!;
