/**
 * TorchScript models loaded from files exported by Python (`torch.jit.script` or
 * `torch.jit.trace`): forward, submodules by name, parameters, forward hooks.
 */
import { writeFileAtomic } from '../io/atomic-write';
import { binding, InferenceOptimization, NativeCallResult, NativeScriptModule, NativeStopRule, NativeTensor } from '../binding';
import { Device } from './dtype';
import { checkOptions, checkString, describeValue } from '../util/check';
import { closestNames } from '../util/names';
import { checkArchiveStorages } from '../io/tensor-storages';
import { checkTorchScriptSource } from '../io/torchscript-source';
import { readArchive } from '../io/zip-integrity';
import { ParameterOwner } from './parameters';
import { tidy } from './scope';
import { Tensor, fromNative, toNative } from './tensor';
import type { ProgramInfo, ProgramModule } from './program-info';

/** What `registerForwardHook` accepts: a JS function, or a module run natively. */
export type ForwardHook = ((module: ScriptModule, inputs: unknown[], output: unknown) => void) | HookModule;

/** A module that can run as a native hook: an nn branch or a loaded TorchScript module. */
export interface HookModule {
  /** @internal */
  readonly nativeHook: unknown;
}

/** Returned by `registerForwardHook`: `remove()` unregisters the hook. */
export interface RemovableHandle {
  readonly id: number;
  remove(): void;
}

/** The outputs of a call together with those of the native hooks it ran. */
export interface CallWithHooks {
  output: unknown;
  /** Hook id -> what the native hook returned during this call. */
  hookOutputs: Map<number, unknown>;
  /** The hook whose stop rule ended the call (its output is `output`), if one did. */
  stoppedBy?: number;
  /** Samples that left the batch early at a hook: their input positions and exit rows. */
  sampleExits?: Array<{ hookId: number; indices: Tensor; rows: Tensor }>;
  /** The input positions of the samples `output` holds, when some left early. */
  remaining?: Tensor;
}

/** @internal State shared by a loaded model and every submodule object taken from it. */
export class LoadedModel {
  /** The latest output of each native hook, kept until deleted (as Distiller's BranchPoint.output). */
  readonly hookOutputs = new Map<number, unknown>();
  /** @param program what an exported program (torch.export) says of its modules; absent for TorchScript. */
  constructor(readonly path: string, readonly program?: ProgramInfo) {}
}

/** LibTorch's words for "the data made no sense to me", which say nothing to a user. */
const INTERNAL_FAILURE = /INTERNAL ASSERT FAILED|please report a bug|_M_range_check|was not in the map|^\s*$|without a message/;

/**
 * The error to give when LibTorch cannot read a model whose archive checksums are all right:
 * its own message when that says something, else what it means, with LibTorch's words kept.
 */
function contentError(what: string, error: unknown): Error {
  const message = (error as Error | undefined)?.message ?? String(error);
  const reason = message.startsWith(`${what}: `) ? message.slice(what.length + 2) : message;
  const first = reason.split('\n')[0];
  if (!INTERNAL_FAILURE.test(first)) return new Error(`${what}: ${reason}`);
  return new Error(`${what}: the archive is whole but its TorchScript code or pickled data is damaged or was written by an incompatible PyTorch ` +
    `(LibTorch: ${first.trim() || 'no message'})${reason.includes('\n') ? `\n${reason}` : ''}`);
}

/** `[1, 3, 32, 32] float32` for a tensor, the type of anything else. */
function describeInput(input: unknown): string {
  if (input instanceof Tensor) return input.isDisposed ? 'a disposed Tensor' : `[${input.shape.join(', ')}] ${input.dtype}`;
  if (Array.isArray(input)) return `[${input.map(describeInput).join(', ')}]`;
  return input === null ? 'null' : typeof input;
}

/**
 * Puts the line that says what went wrong first, before TorchScript's tracebacks, and ends
 * it with where: the model file, the module and the inputs' shapes.
 */
function clarify(error: unknown, method: string, where: string, inputs: unknown[]): Error {
  // Not `instanceof Error`: errors made by the addon may come from another realm (jest, vm).
  const message = (error as Error | undefined)?.message;
  if (typeof message !== 'string' || !message.startsWith(`${method}: `)) return error as Error;
  const context = ` (${where}, inputs ${inputs.map(describeInput).join(', ') || 'none'})`;
  if (!message.includes('Traceback of TorchScript')) {
    const [first, ...rest] = message.split('\n');
    const clarified = new Error([first + context, ...rest].join('\n'));
    clarified.name = (error as Error).name;
    return clarified;
  }
  // The interpreter puts the cause last, after one traceback per frame.
  // (`RuntimeError: ...`, or `builtins.ValueError: ...` for an exception raised by TorchScript code).
  const causes = [...message.matchAll(/^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.*)$/gm)];
  const cause = causes.length > 0 ? causes[causes.length - 1] : undefined;
  const clarified = new Error(`${method}: ${cause ? cause[2] : 'the TorchScript interpreter failed'}${context}\n\n${message}`);
  clarified.name = !cause || cause[1] === 'RuntimeError' ? 'Error' : cause[1];
  return clarified;
}

/** Wraps a JS hook so that whatever it throws reaches the caller as an Error that says where. */
function guardedHook(hook: (inputs: unknown[], output: unknown) => unknown, where: string): (inputs: unknown[], output: unknown) => unknown {
  return (inputs, output) => {
    try {
      return hook(inputs, output);
    } catch (thrown) {
      // An Error (of any realm) is the user's own and passes through as the very same object.
      if (thrown !== null && typeof thrown === 'object' && typeof (thrown as Error).message === 'string' &&
          typeof (thrown as Error).stack === 'string') throw thrown;
      let shown: string;
      try { shown = typeof thrown === 'symbol' ? thrown.toString() : JSON.stringify(thrown) ?? String(thrown); } catch { shown = String(thrown); }
      throw new Error(`the forward hook on ${where} threw a value that is not an Error: ${shown}`, { cause: thrown });
    }
  };
}

export class ScriptModule extends ParameterOwner implements HookModule {
  /** @internal */
  readonly native: NativeScriptModule;
  /** @internal */
  readonly model: LoadedModel;
  /** The fully qualified name of this module in the loaded model ('' for the root). */
  readonly qualifiedName: string;

  /** For a module made by `optimizeForInference`: how it was compiled ('oneDNN chains', 'oneDNN' or 'frozen'). */
  inferenceOptimization?: InferenceOptimization;

  /** @internal Modules come from `jit.load` and from `getModule`/`namedModules`. */
  constructor(native: NativeScriptModule, model: LoadedModel, qualifiedName: string) {
    super();
    this.native = native;
    this.model = model;
    this.qualifiedName = qualifiedName;
  }

  /** @internal */
  get nativeHook(): unknown { return this.native; }

  /** The TorchScript class name of this module (e.g. `__torch__.BasicBlock`). */
  get typeName(): string { return this.native.typeName(); }

  /** Runs `forward` on the calling thread. */
  forward(...inputs: unknown[]): any {
    return this.callMethod('forward', ...inputs);
  }

  /** Runs `forward` on a worker thread; the event loop keeps running meanwhile. */
  forwardAsync(...inputs: unknown[]): Promise<any> {
    return this.callMethodAsync('forward', ...inputs);
  }

  /** Runs another method of the module (one exported with `@torch.jit.export`). */
  callMethod(method: string, ...inputs: unknown[]): any {
    return this.callWithHooks(method, inputs).output;
  }

  /** Runs another method of the module on a worker thread. */
  async callMethodAsync(method: string, ...inputs: unknown[]): Promise<any> {
    return (await this.callWithHooksAsync(method, inputs)).output;
  }

  /**
   * @internal Runs a method and returns what its native hooks produced too. A stop rule
   * ends the call at its hook when every sample meets it.
   */
  callWithHooks(method: string, inputs: unknown[], stopRules?: NativeStopRule[], inference = false): CallWithHooks {
    checkString(method, 'callMethod: method');
    let result: NativeCallResult;
    try {
      result = this.native.runMethod(method, inputs.map(toNative), stopRules, inference);
    } catch (error) {
      throw clarify(error, method, this.where, inputs);
    }
    return this.received(result);
  }

  /** @internal `onSampleExit` hears of samples as they leave the batch (per-sample stop rules). */
  async callWithHooksAsync(method: string, inputs: unknown[], stopRules?: NativeStopRule[], inference = false,
    onSampleExit?: (hookId: number, positions: number[], rows: NativeTensor) => void): Promise<CallWithHooks> {
    checkString(method, 'callMethodAsync: method');
    let result: NativeCallResult;
    try {
      result = await this.native.runMethodAsync(method, inputs.map(toNative), stopRules, inference, onSampleExit);
    } catch (error) {
      throw clarify(error, method, this.where, inputs);
    }
    return this.received(result);
  }

  /** `module 'layer1' of 'model.pt'`: where this module is, for error messages. */
  private get where(): string {
    return this.qualifiedName === '' ? `model '${this.model.path}'` : `module '${this.qualifiedName}' of '${this.model.path}'`;
  }

  private received([output, hooks, stoppedBy, sampleExits, remaining]: NativeCallResult): CallWithHooks {
    const hookOutputs = new Map<number, unknown>();
    for (const [id, value] of hooks) {
      const wrapped = fromNative(value);
      hookOutputs.set(id, wrapped);
      this.model.hookOutputs.set(id, wrapped);
    }
    const result: CallWithHooks = stoppedBy !== null
      ? { output: hookOutputs.get(stoppedBy), hookOutputs, stoppedBy }
      : { output: fromNative(output), hookOutputs };
    if (sampleExits.length > 0) {
      result.sampleExits = sampleExits.map(([hookId, indices, rows]) => ({ hookId, indices: new Tensor(indices), rows: new Tensor(rows) }));
      result.remaining = new Tensor(remaining!);
    }
    return result;
  }

  /**
   * Whether samples can leave the batch after this module: with every call of the root's
   * forward inlined (through containers such as Sequential and methods such as
   * `_forward_impl`), this module is called once, unconditionally, and no batch-sized
   * tensor made before it (a skip connection, the input) is read after it. The block
   * boundaries of a chain, as between ResNet's blocks, nested or not.
   */
  get isBatchBoundary(): boolean {
    return this.programModule ? this.batchBoundaryProblem === undefined : this.native.callSites()[1];
  }

  /** @internal For a module of an exported program: why samples cannot leave the batch after it. */
  get batchBoundaryProblem(): string | undefined {
    const program = this.programModule;
    return program ? program.hookRefusal ?? program.boundaryRefusal ?? (program.calls !== 1 ? `module '${this.qualifiedName}' runs ${program.calls} times in one forward` : undefined) : undefined;
  }

  /** Whether this module belongs to an exported program (`torch.export.load`) rather than TorchScript. */
  get isExportedProgram(): boolean { return this.model.program !== undefined; }

  /** @internal What the exported program says of this module (undefined for TorchScript and for the root). */
  get programModule(): ProgramModule | undefined { return this.model.program?.modules.get(this.qualifiedName); }

  /** @internal How many graph nodes an exported program has run since it was loaded. */
  get programNodesRun(): number { return this.native.programNodesRun(); }

  /**
   * How many times one forward of the root calls this module's forward: 0 (never), 1, 2
   * and more (a module reused, as torchvision's BasicBlock reuses its `relu`), or -1 when
   * the call sits in a loop.
   */
  get callsPerForward(): number {
    const program = this.programModule;
    return program ? program.calls : this.native.callSites()[0];
  }

  /**
   * The oneDNN chains this module runs (`optimize: 'chains'`), for a module made by
   * `optimizeForInference` or a root compiled for inference by an `EarlyExitModel`: per chain
   * in forward order, per input shape run so far, its arena's size and its primitives (kind,
   * oneDNN's implementation, layouts in and out, output shape, post-ops), the reorders
   * between layouts included. Empty for a model compiled otherwise.
   */
  oneDnnChains(): ChainPlanReport[][] {
    return this.native.oneDnnChains().map((chain) => chain.map(({ shape, arenaBytes, steps }) => ({
      shape, arenaBytes,
      primitives: steps.map(([description, runs, nanoseconds]) => ({ description, runs, meanMs: runs > 0 ? nanoseconds / runs / 1e6 : null })),
    })));
  }

  /**
   * Runs `forward` (a forward of this module, or `forwardEarlyExit` of the model it is the
   * backbone of) `warmup` times, then `runs` times timing each oneDNN primitive of its chains:
   * beside the forward's whole time, what is kernel and what is everything else (LibTorch's
   * operations outside the chains, the interpreter, exit branches, allocation). Timing waits
   * for each primitive, so the forward is a little slower than untimed. `ONEDNN_VERBOSE=1` in
   * the environment has oneDNN print every primitive it runs, with its time, as a second view.
   */
  profileOneDnnChains(forward: () => unknown, options: { runs?: number; warmup?: number } = {}): ChainProfile {
    checkOptions(options, ['runs', 'warmup'], 'profileOneDnnChains: options');
    const runs = options.runs ?? 100;
    const warmup = options.warmup ?? 10;
    if (!Number.isInteger(runs) || runs < 1) throw new TypeError(`profileOneDnnChains: runs must be a positive integer, got ${describeValue(runs)}`);
    if (!Number.isInteger(warmup) || warmup < 0) throw new TypeError(`profileOneDnnChains: warmup must be a non-negative integer, got ${describeValue(warmup)}`);
    // The forward's tensors are freed after each run.
    const once = () => tidy(() => { forward(); });
    for (let i = 0; i < warmup; i++) once();
    this.native.timeOneDnnChains(true);
    let elapsed: bigint;
    try {
      const start = process.hrtime.bigint();
      for (let i = 0; i < runs; i++) once();
      elapsed = process.hrtime.bigint() - start;
    } finally {
      this.native.timeOneDnnChains(false);
    }
    const chains = this.oneDnnChains();
    let kernelNs = 0;
    for (const chain of this.native.oneDnnChains()) for (const plan of chain) for (const [, , ns] of plan.steps) kernelNs += ns;
    const forwardMs = Number(elapsed) / 1e6 / runs;
    const kernelMs = kernelNs / 1e6 / runs;
    return { runs, forwardMs, kernelMs, otherMs: forwardMs - kernelMs, chains };
  }

  /** Every module below this one, itself first as '', in the order of PyTorch's `named_modules()`. */
  namedModules(): Array<[string, ScriptModule]> {
    return this.native.namedModules().map(([name, native]) => [name, this.sub(native, name)]);
  }

  /** The direct children, as PyTorch's `named_children()`. */
  namedChildren(): Array<[string, ScriptModule]> {
    return this.native.namedChildren().map(([name, native]) => [name, this.sub(native, name)]);
  }

  /** The module with the fully qualified name `name` below this one ('' is this module). */
  getModule(name: string): ScriptModule {
    checkString(name, 'getModule: name', false);
    const modules = this.namedModules();
    const found = modules.find(([candidate]) => candidate === name);
    if (found) return found[1];
    const names = modules.map(([candidate]) => candidate);
    const hint = names.length <= 1
      ? 'it has no submodules (a frozen or inlined model loses them; export it without torch.jit.freeze)'
      : `closest names: ${closestNames(name, names).join(', ')}`;
    throw new Error(`no module named '${name}' in this model; ${hint}`);
  }

  /** Parameters and buffers by name (PyTorch's `state_dict()`), aliasing the model's. */
  stateDict(): Record<string, Tensor> {
    return Object.fromEntries([...this.namedParameters(), ...this.namedBuffers()]);
  }

  /** @internal How load_state_dict's errors name this module. */
  get stateDictOwner(): string { return this.typeName; }

  /** Sets training mode on this module and every module below it. */
  train(mode = true): this {
    this.native.train(mode);
    return this;
  }

  eval(): this { return this.train(false); }

  /** Whether this module is in training mode (PyTorch's `training`). */
  get training(): boolean { return this.native.isTraining(); }

  /** The same as `training`. */
  get isTraining(): boolean { return this.training; }

  /** Moves parameters and buffers to `device` (tensors taken from the model before stay where they were). */
  to(device: Device | string): this {
    this.native.to(device);
    return this;
  }

  /** Saves the module as TorchScript that Python's `torch.jit.load` reads (hooks are not saved). */
  save(path: string): void {
    checkString(path, 'ScriptModule.save: path');
    if (this.model.program) {
      throw new Error(`ScriptModule.save: an exported program cannot be saved as TorchScript; save its weights with torch.save(module.stateDict(), '${path}'), ` +
        'which Python reads with model.load_state_dict(torch.load(path))');
    }
    writeFileAtomic(path, this.native.serialize(), 'ScriptModule.save');
  }

  /** The names of the methods that can be called. */
  methodNames(): string[] { return this.native.methodNames(); }

  /** A method's TorchScript schema, e.g. `forward(__torch__.Net self, Tensor x) -> Tensor`. */
  methodSchema(method = 'forward'): string { return this.native.methodSchema(method); }

  /**
   * Registers a hook that runs after every call of this module's forward, as PyTorch's
   * `register_forward_hook`: a JS function `(module, inputs, output) => void` (its return
   * value cannot replace the output), or a module (an nn branch, a ScriptModule) that
   * runs natively on the output, whose result is kept as the hook's output.
   */
  registerForwardHook(hook: ForwardHook): RemovableHandle {
    const where = this.qualifiedName === '' ? 'the root module' : `'${this.qualifiedName}'`;
    if (typeof hook !== 'function' && (hook === null || typeof hook !== 'object' || !('nativeHook' in hook))) {
      throw new TypeError(`registerForwardHook on ${where}: a forward hook must be a function, an nn module or a ScriptModule, got ${hook === null ? 'null' : typeof hook}`);
    }
    const refusal = this.programModule?.hookRefusal;
    if (refusal !== undefined) throw new Error(`registerForwardHook on ${where}: ${refusal}`);
    const nativeHook = typeof hook === 'function'
      ? guardedHook((inputs, output) => hook(this, fromNative(inputs) as unknown[], fromNative(output)), where)
      : hook.nativeHook;
    const id = this.native.registerHook(nativeHook as never);
    const native = this.native;
    const model = this.model;
    return {
      id,
      remove(): void {
        native.removeHook(id);
        model.hookOutputs.delete(id);
      },
    };
  }

  /** @internal The latest output of a native hook, if it has one. */
  hookOutput(id: number): unknown { return this.model.hookOutputs.get(id); }

  /** @internal Forgets the latest output of a native hook. */
  deleteHookOutput(id: number): void { this.model.hookOutputs.delete(id); }

  /** Releases this module object (the model lives on while other objects of it do). */
  dispose(): void { this.native.dispose(); }

  get isDisposed(): boolean { return this.native.isDisposed(); }

  private sub(native: NativeScriptModule, name: string): ScriptModule {
    const qualified = this.qualifiedName === '' ? name : name === '' ? this.qualifiedName : `${this.qualifiedName}.${name}`;
    return new ScriptModule(native, this.model, qualified);
  }
}

/** One primitive of a oneDNN chain (`ScriptModule.oneDnnChains`). */
export interface ChainPrimitive {
  /** "convolution brg_conv_fwd:avx512_core acdb -> acdb 1x16x32x32 +add +relu": kind, oneDNN's implementation, layouts, output shape, post-ops. */
  description: string;
  /** Runs timed by `profileOneDnnChains`, and their mean; null when none was timed. */
  runs: number;
  meanMs: number | null;
}

/** A oneDNN chain as made for one input shape. */
export interface ChainPlanReport {
  shape: string;
  /** The one buffer every intermediate of the chain lives in, planned from their lifetimes. */
  arenaBytes: number;
  primitives: ChainPrimitive[];
}

/** What `ScriptModule.profileOneDnnChains` measured, per forward. */
export interface ChainProfile {
  runs: number;
  forwardMs: number;
  /** The chains' primitives, reorders included. */
  kernelMs: number;
  /** Everything else: forwardMs - kernelMs. */
  otherMs: number;
  chains: ChainPlanReport[][];
}

/** Options of `jit.optimizeForInference` and `EarlyExitModel.optimizeForInference`. */
export interface InferenceOptions {
  /**
   * What runs after freezing (weights as constants, batch norm folded into convolutions).
   * - `'chains'`: each run of convolutions, activations, residual adds, pooling, flatten and
   *   linear layers becomes one chain of oneDNN primitives that keeps activations in oneDNN's
   *   own layout, with activations and adds as post-ops of the convolution before them. At
   *   batch 1 most of a forward's time is spent between kernels, and a chain spends nothing
   *   there (issue 28). Needs the addon built against oneDNN 3 (LibTorch 2.6 and later); fails,
   *   saying why, where it is not, or where the model has nothing to build a chain around.
   * - `true`: LibTorch's `optimize_for_inference` passes (oneDNN prepacked convolutions, fused
   *   convolution-add-ReLU); fails, saying why, where they are known to crash the process
   *   (Debian 13's LibTorch 2.6 with oneDNN 3.7).
   * - `false`: freezing only.
   * - left out: chains where the addon has them, else `optimize_for_inference` where it works,
   *   else freezing only. `inferenceOptimization` tells which ran.
   */
  optimize?: boolean | 'chains';
}

/** @internal */
export function checkInferenceOptions(options: InferenceOptions, what: string): boolean | 'chains' | undefined {
  checkOptions(options, ['optimize'], what);
  if (options.optimize !== undefined && typeof options.optimize !== 'boolean' && options.optimize !== 'chains') {
    throw new TypeError(`${what}.optimize must be a boolean or 'chains', got ${describeValue(options.optimize)}`);
  }
  return options.optimize;
}

/**
 * Turns the graph executor's CPU fuser (NNC, TensorExpr) on or off for the whole process, as
 * Python's `torch._C._jit_set_texpr_fuser_enabled`. On LibTorch 2.14 it compiles a kernel for
 * each new input shape a TorchScript graph meets, 0.3 to 1 s each (measured on the compiled
 * text encoder, in Python too): a server whose batches and sequences vary in size would pay
 * that in its answers, so `serve` turns it off.
 */
export function setTensorExprFuserEnabled(enabled: boolean): void {
  if (typeof enabled !== 'boolean') throw new TypeError(`setTensorExprFuserEnabled needs a boolean, got ${describeValue(enabled)}`);
  binding.setTensorExprFuserEnabled(enabled);
}

/** Whether the graph executor's CPU fuser is on (`setTensorExprFuserEnabled`). */
export function tensorExprFuserEnabled(): boolean {
  return binding.tensorExprFuserEnabled();
}

/**
 * A new module: `module` frozen and optimized for inference, as PyTorch's
 * `torch.jit.optimize_for_inference`. Its submodules are inlined, so it takes no hooks but
 * on itself; it runs in eval mode under LibTorch's InferenceMode (no autograd at all, which
 * LibTorch 2.14 needs for oneDNN tensors in max pooling) and returns ordinary tensors.
 * `module` must be in eval mode and is left as it is.
 */
export function optimizeForInference(module: ScriptModule, options: InferenceOptions = {}): ScriptModule {
  if (!(module instanceof ScriptModule)) throw new TypeError('jit.optimizeForInference: module must be a ScriptModule');
  const optimize = checkInferenceOptions(options, 'jit.optimizeForInference: options');
  let compiled: [NativeScriptModule, InferenceOptimization];
  try {
    compiled = module.native.optimizedCopy(optimize);
  } catch (error) {
    throw new Error(`jit.optimizeForInference: cannot compile model '${module.model.path}': ${(error as Error).message}`);
  }
  const optimized = new ScriptModule(compiled[0], new LoadedModel(`${module.model.path} (optimized for inference)`), '');
  optimized.inferenceOptimization = compiled[1];
  return optimized;
}

/** Options of `jit.load`. */
export interface LoadOptions {
  /** Where to put parameters and buffers: 'cpu' (default), 'cuda', 'cuda:N'. */
  device?: Device | string;
}

/** Loads a TorchScript model saved by Python's `torch.jit.save` (scripted or traced). */
export function load(path: string, options: LoadOptions = {}): ScriptModule {
  checkString(path, 'jit.load: path');
  checkOptions(options, ['device'], 'jit.load: options');
  if (options.device !== undefined) checkString(options.device, 'jit.load: options.device');
  const what = `cannot load TorchScript model '${path}'`;
  const { bytes, entries } = readArchive(path, what);
  checkArchiveStorages(entries, what);
  checkTorchScriptSource(entries, what);
  let native: NativeScriptModule;
  try {
    native = binding.loadScriptModule(bytes, path, options.device);
  } catch (error) {
    throw contentError(what, error);
  }
  return new ScriptModule(native, new LoadedModel(path), '');
}
