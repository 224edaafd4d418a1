/**
 * The one typed seam between TypeScript and the native addon: the only file that loads
 * the `.node` binary, and the declaration of everything it exports.
 */
import * as fs from 'fs';
import * as path from 'path';

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
  data(): Float32Array | Float64Array | Int32Array | BigInt64Array | Int16Array | Int8Array | Uint8Array;
  item(): number | boolean;
  backward(gradient?: NativeTensor | null, retainGraph?: boolean): void;
  dispose(): void;
  isDisposed(): boolean;
  sameAs(other: NativeTensor): boolean;
}

/** [output, [[hookId, hookOutput], ...], the hook that stopped the call or null] */
export type NativeCallResult = [NativeValue, Array<[number, NativeValue]>, number | null];

/** [hookId, rule, threshold]: the hook's output ends the call when every sample meets the rule. */
export type NativeStopRule = [number, 'entropy' | 'maxProbability' | 'margin' | 'patience', number];

export interface NativeScriptModule {
  runMethod(method: string, inputs: NativeValue[], stopRules?: NativeStopRule[]): NativeCallResult;
  runMethodAsync(method: string, inputs: NativeValue[], stopRules?: NativeStopRule[]): Promise<NativeCallResult>;
  namedModules(): Array<[string, NativeScriptModule]>;
  namedChildren(): Array<[string, NativeScriptModule]>;
  namedParameters(recurse: boolean): Array<[string, NativeTensor]>;
  namedBuffers(recurse: boolean): Array<[string, NativeTensor]>;
  train(mode: boolean): void;
  isTraining(): boolean;
  to(device: string): void;
  save(path: string): void;
  methodNames(): string[];
  methodSchema(method: string): string;
  typeName(): string;
  registerHook(hook: NativeHook): number;
  removeHook(id: number): boolean;
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

export interface Binding {
  NativeTensor: abstract new (...args: never[]) => NativeTensor;
  NativeScriptModule: abstract new (...args: never[]) => NativeScriptModule;
  NativeNnModule: abstract new (...args: never[]) => NativeNnModule;
  fromTypedArray(data: ArrayBufferView, shape: number[], dtype?: string): NativeTensor;
  callOp(name: string, overload: string, args: NativeValue[], kwargs?: Record<string, NativeValue>): NativeValue;
  loadScriptModule(path: string, device?: string): NativeScriptModule;
  createNnModule(kind: string, options: Record<string, unknown>, children?: NativeNnModule[]): NativeNnModule;
  /** Bytes in torch.save's format (Python's torch.load reads them). */
  pickleSave(value: NativeValue): Buffer;
  pickleLoad(bytes: Buffer): NativeValue;
  setNumThreads(threads: number): void;
  getNumThreads(): number;
  manualSeed(seed: number): void;
  setGradEnabled(enabled: boolean): void;
  isGradEnabled(): boolean;
  cudaIsAvailable(): boolean;
  cudaDeviceCount(): number;
  libtorchVersion: string;
  builtWithCuda: boolean;
}

function packageRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`torch-early-exit: no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

function loadBinding(): Binding {
  const root = packageRoot();
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const bindings = require('bindings') as (options: { bindings: string; module_root: string }) => Binding;
    return bindings({ bindings: 'torch_early_exit', module_root: root });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(
      `torch-early-exit: cannot load the native addon from ${root}.\n` +
      'Build it with `npm run build:native` (needs LibTorch: apt-get install libtorch-dev libopenblas0-pthread).\n' +
      `Cause: ${reason}`);
  }
}

/** The loaded native addon. */
export const binding: Binding = loadBinding();
