/**
 * The seed's `ResNetCifarEarlyExit` as a reusable class: a loaded TorchScript backbone
 * with exit branches, whose forward returns `[...exitOutputs, finalOutput]`.
 */
import { Device } from '../torch/dtype';
import { InferenceOptimization, NativeStopRule, NativeTensor } from '../binding';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CallWithHooks, InferenceOptions, LoadOptions, ScriptModule, checkInferenceOptions, load } from '../torch/jit';
import { exportedProgramsSupported, load as loadExported } from '../torch/export';
import { Module } from '../torch/nn';
import { Tensor } from '../torch/tensor';
import { noGrad, noGradAsync, tidy, zeros } from '../torch/torch';
import { checkFinite, checkOptions, describeValue } from '../util/check';
import { LabelFreeCriterion } from './criteria';
import { EarlyExitMgr, ExitBranch, ExitsDef } from './exit-mgr';

/** How `forwardEarlyExit` decides: a label-free criterion and one threshold per exit. */
export interface EarlyExitPolicy {
  criterion: LabelFreeCriterion;
  /** One per exit; `null` (or a threshold no sample can meet) never exits there. */
  thresholds: ReadonlyArray<number | null>;
  /**
   * Let each sample leave at the first exit where it meets the criterion, the others going
   * on with a smaller batch. Only where samples can leave alone: `exitsPerSample` for the
   * model itself, `inferenceExitsPerSample` in inference mode (where the compiled model
   * carries a skip connection's or a mask's staying rows past the exit); at any other exit
   * with a threshold it is refused, naming the exit and why.
   */
  perSample?: boolean;
}

/** Options of `forwardEarlyExitAsync`. */
export interface EarlyExitAsyncOptions {
  /** Called as samples leave the batch at an exit (early release); see `forwardEarlyExitAsync`. */
  onSampleExit?: (exit: number, positions: number[], outputs: Tensor) => void;
}

/** What `forwardEarlyExit` returns. */
export interface EarlyExitResult {
  /** Each sample's output from the exit it took (or the final output), in input order. */
  output: Tensor;
  /** The deepest exit any sample took; the number of exits for the final output. */
  exit: number;
  /** The exit each sample took, in input order. */
  exits: number[];
}

export class EarlyExitModel {
  readonly backbone: ScriptModule;
  readonly eeMgr = new EarlyExitMgr();
  readonly exitsDef: ExitsDef;

  /** Per exit: whether samples can leave the batch there (see `EarlyExitPolicy.perSample`). */
  readonly exitsPerSample: readonly boolean[];

  /** Per exit: how many times one forward calls its module (-1: in a loop); see `forwardEarlyExit`. */
  readonly exitCalls: readonly number[];

  /**
   * Per exit, whether samples can leave alone in the compiled model (see
   * `inferenceExitsPerSample`), and where they cannot, why; set while in inference mode.
   */
  private inferenceBoundaries?: readonly boolean[];
  private inferenceProblems: readonly string[] = [];

  constructor(backbone: ScriptModule, exitsDef: ExitsDef) {
    this.backbone = backbone;
    this.exitsDef = exitsDef;
    this.eeMgr.attachExits(backbone, exitsDef);
    const points = exitsDef.map(([point]) => backbone.getModule(point));
    this.exitCalls = points.map((module) => module.callsPerForward);
    this.exitsPerSample = points.map((module) => module.isBatchBoundary);
  }

  /**
   * Compiles the backbone for inference with its exits in place: frozen (weights as
   * constants, batch norm folded into convolutions), then, where the addon has them, oneDNN
   * primitive chains with activations and adds fused into the convolutions (LibTorch 2.6 and
   * later), else LibTorch's `optimize_for_inference` as PyTorch's
   * `torch.jit.optimize_for_inference` would compile it without exits (`InferenceOptions.optimize`
   * chooses). Every exit point still runs its branch and can stop the forward;
   * `backbone.oneDnnChains()` shows what the chains run. From then on `forwardEarlyExit`
   * and `forwardEarlyExitAsync` run the compiled model; `forward()` and training keep the
   * model itself. The compiled model is a snapshot: once weights, exits, hooks, mode or
   * device change, `forwardEarlyExit` refuses to run it, saying what changed, until this is
   * called again (or `leaveInferenceMode()`). The model must be in eval mode.
   */
  optimizeForInference(options: InferenceOptions = {}): this {
    const optimize = checkInferenceOptions(options, 'optimizeForInference: options');
    if (this.training || this.branches.some((branch) => (branch as Module | ScriptModule).training)) {
      throw new Error('optimizeForInference: the model is in train mode (the backbone or a branch): call eval() first');
    }
    try {
      [this.inferenceBoundaries, this.compiledWith, this.inferenceProblems] = noGrad(() => this.backbone.native.compileForInference(this.exitPoints, optimize));
    } catch (error) {
      throw new Error(`optimizeForInference: cannot compile model '${this.backbone.model.path}': ${(error as Error).message}`);
    }
    return this;
  }

  /** Whether `forwardEarlyExit` runs the model compiled by `optimizeForInference`. */
  get inferenceMode(): boolean { return this.inferenceBoundaries !== undefined; }

  /** In inference mode, how the model was compiled: 'oneDNN chains', 'oneDNN' or 'frozen' (see `InferenceOptions.optimize`). */
  get inferenceOptimization(): InferenceOptimization | undefined { return this.inferenceBoundaries && this.compiledWith; }

  /**
   * In inference mode, where the compiled model lets samples leave alone: at its batch
   * boundaries, and wherever every batch-sized value made before the exit and read after it
   * (a residual block's input, a padding mask) holds the batch along dim 0, so that the
   * compiled graph carries the staying rows of it past the exit. That can differ from
   * `exitsPerSample` both ways: TorchScript's uncompiled forward shrinks only the exit's own
   * output, and an exported program's interpreter shrinks every value the program says holds
   * the batch, where the compiled graph carries only tensors. Undefined outside inference mode.
   */
  get inferenceExitsPerSample(): readonly boolean[] | undefined { return this.inferenceBoundaries; }

  private compiledWith?: InferenceOptimization;

  /** Drops the compiled model: `forwardEarlyExit` runs the model itself again. */
  leaveInferenceMode(): this {
    this.backbone.native.dropInference();
    this.inferenceBoundaries = undefined;
    return this;
  }

  /** The exit points, in order. */
  get exitPoints(): string[] { return [...this.eeMgr.exitPoints]; }

  /** The branches, in order. */
  get branches(): ExitBranch[] { return this.exitsDef.map(([, branch]) => branch); }

  /** Clears the exits' outputs, runs the backbone, returns `[...exitOutputs, finalOutput]`. */
  forward(input: Tensor): Tensor[] {
    this.eeMgr.deleteExitsOutputs(this.backbone);
    const output = this.backbone.forward(input) as Tensor;
    return [...this.eeMgr.getExitsOutputs(this.backbone), output];
  }

  /**
   * The same on a worker thread. Each call returns its own exit outputs, so several calls
   * can be in flight on one model.
   */
  async forwardAsync(input: Tensor): Promise<Tensor[]> {
    return this.collect(await this.backbone.callWithHooksAsync('forward', [input]));
  }

  /**
   * Inference that really exits: when every sample of the batch meets the criterion at an
   * exit, the forward stops there (nothing after the exit point runs) and that exit's
   * output is returned; otherwise it goes on to the next exit and the final output.
   * Runs without gradients.
   *
   * An exit with a threshold must sit on a module that the forward calls exactly once: for
   * a module called several times (torchvision's BasicBlock reuses one `relu`), training,
   * `forward()` and `getExitsOutputs` see the last call's output (as Distiller's
   * BranchPoint keeps it), and a stop at an earlier call would serve an exit that was never
   * trained, so it is refused. With `perSample`, every exit with a threshold must let
   * samples leave alone (`exitsPerSample`, or in inference mode `inferenceExitsPerSample`);
   * anywhere else it is refused, naming the exit and the reason.
   */
  forwardEarlyExit(input: Tensor, policy: EarlyExitPolicy): EarlyExitResult {
    const rules = this.stopRules(policy);
    return this.exitResult(noGrad(() => this.backbone.callWithHooks('forward', [input], rules, this.inferenceMode)), input.shape[0]);
  }

  /**
   * `forwardEarlyExit` on a worker thread. With `perSample`, `options.onSampleExit` hears of
   * samples the moment they leave the batch, while the forward goes on with the others
   * (early release): `(exit, positions, outputs)` with the exit's index, the samples'
   * positions in `input` and their rows of the exit's output, on the main thread. The
   * result still holds every sample. What the callback throws rejects the call.
   */
  async forwardEarlyExitAsync(input: Tensor, policy: EarlyExitPolicy, options: EarlyExitAsyncOptions = {}): Promise<EarlyExitResult> {
    const rules = this.stopRules(policy);
    checkOptions(options, ['onSampleExit'], 'forwardEarlyExitAsync: options');
    const { onSampleExit } = options;
    if (onSampleExit !== undefined && typeof onSampleExit !== 'function') {
      throw new TypeError(`forwardEarlyExitAsync: options.onSampleExit must be a function, got ${describeValue(onSampleExit)}`);
    }
    const exits = this.eeMgr.exitsOf(this.backbone);
    let thrown: { error: unknown } | undefined;
    const release = onSampleExit && ((hookId: number, positions: number[], rows: NativeTensor) => {
      if (thrown) return;
      const output = new Tensor(rows);
      try {
        onSampleExit(exits.findIndex((exit) => exit.handle.id === hookId), positions, output);
      } catch (error) {
        thrown = { error };
      }
    });
    const call = await noGradAsync(() => this.backbone.callWithHooksAsync('forward', [input], rules, this.inferenceMode, release));
    const result = this.exitResult(call, input.shape[0]);
    if (thrown) {
      result.output.dispose();
      throw thrown.error;
    }
    return result;
  }

  private stopRules(policy: EarlyExitPolicy): NativeStopRule[] {
    const exits = this.eeMgr.exitsOf(this.backbone);
    if (policy === null || typeof policy !== 'object') {
      throw new TypeError(`forwardEarlyExit: policy must be an object { criterion, thresholds, perSample? }, got ${describeValue(policy)}`);
    }
    checkOptions(policy, ['criterion', 'thresholds', 'perSample'], 'forwardEarlyExit: policy');
    if (!Array.isArray(policy.thresholds)) {
      throw new TypeError(`forwardEarlyExit: policy.thresholds must be an array with one threshold (or null) per exit, got ${describeValue(policy.thresholds)}`);
    }
    policy.thresholds.forEach((threshold, i) => {
      // null is the one way to say "never exit here"; NaN or undefined would say it silently.
      if (threshold !== null) checkFinite(threshold, `forwardEarlyExit: policy.thresholds[${i}] (exit '${exits[i]?.point ?? i}')`);
    });
    if (policy.thresholds.length !== exits.length) {
      throw new Error(`one threshold per exit: ${exits.length} exit(s), ${policy.thresholds.length} threshold(s)`);
    }
    const rules: NativeStopRule[] = [];
    const boundaries = this.inferenceBoundaries;
    exits.forEach((exit, i) => {
      const threshold = policy.thresholds[i];
      if (threshold === null) return;
      const calls = this.exitCalls[i];
      if (calls !== 1) {
        const how = calls === 0 ? 'is never called by the forward' : calls < 0 ? 'is called in a loop' : `is called ${calls} times in one forward`;
        throw new Error(`forwardEarlyExit: exit '${exit.point}' ${how}: training and getExitsOutputs use its last call's output, ` +
          'so a stop at another call would serve an exit that was not trained; attach the exit to a module called once ' +
          '(the block that holds it, for example), or give this exit the threshold null');
      }
      if (policy.perSample && !(boundaries ?? this.exitsPerSample)[i]) {
        const problem = boundaries ? this.inferenceProblems[i] : this.backbone.getModule(exit.point).batchBoundaryProblem;
        throw new Error(`forwardEarlyExit: samples cannot leave the batch alone at exit '${exit.point}'${boundaries ? ' of the compiled model' : ''}: ` +
          `${problem || 'a batch-sized tensor made before it (a skip connection, the input) is still read after it'}${this.wayOut(i, problem)}; ` +
          'use a batch boundary (exitsPerSample), a whole-batch policy (perSample: false), or the threshold null there');
      }
      rules.push([exit.handle.id, policy.criterion, threshold, Boolean(policy.perSample)]);
    });
    if (policy.criterion === 'patience' && rules.length !== exits.length) {
      throw new Error('patience counts agreeing exits in a row: give every exit a threshold');
    }
    return rules;
  }

  /** Where per-sample exits at exit `i` are refused, the other way to run the model that would take them, said in brackets. */
  private wayOut(i: number, problem: string | undefined): string {
    const point = this.exitPoints[i];
    // An exported program's interpreter shrinks every value that holds the batch, sizes and lists too.
    if (this.inferenceBoundaries) return this.exitsPerSample[i] ? ' (the model itself can: leaveInferenceMode() runs it uncompiled)' : '';
    if (this.backbone.isExportedProgram || problem !== undefined) return '';
    // TorchScript's uncompiled forward shrinks the exit's output alone; compiled, the graph carries the rest.
    if (this.backbone.getModule(point).native.carryProblem() === '') {
      return ' (compiled, it can: optimizeForInference() carries every batch-sized value read after the exit along with the samples that stay)';
    }
    return exportedProgramsSupported()
      ? ' (the same model exported by torch.export can: torch.export.load runs it in an interpreter that shrinks every such tensor too)'
      : '';
  }

  private exitResult(call: CallWithHooks, batch: number): EarlyExitResult {
    const exits = this.eeMgr.exitsOf(this.backbone);
    const indexOf = (hookId: number | undefined) =>
      (hookId === undefined ? exits.length : exits.findIndex((exit) => exit.handle.id === hookId));
    const last = indexOf(call.stoppedBy);
    const output = call.output as Tensor;
    if (!call.sampleExits) return { output, exit: last, exits: new Array(batch).fill(last) };
    // Samples left at several exits: put every row back at its input position.
    const taken = new Array<number>(batch).fill(last);
    const combined = noGrad(() => tidy(() => {
      const rows = call.sampleExits!;
      const result = zeros([batch, ...rows[0].rows.shape.slice(1)], { dtype: rows[0].rows.dtype, device: rows[0].rows.device });
      for (const { hookId, indices, rows: values } of rows) {
        result.indexCopy_(0, indices, values);
        for (const position of Array.from(indices.data() as BigInt64Array, Number)) taken[position] = indexOf(hookId);
      }
      result.indexCopy_(0, call.remaining!, output);
      return result;
    }));
    return { output: combined, exit: Math.max(...taken), exits: taken };
  }

  private collect(call: CallWithHooks): Tensor[] {
    const exits = this.eeMgr.exitsOf(this.backbone).map((exit) => {
      const output = call.hookOutputs.get(exit.handle.id);
      if (output === undefined) throw new Error(`exit '${exit.point}' has no output: the forward did not reach it`);
      return output as Tensor;
    });
    return [...exits, call.output as Tensor];
  }

  /**
   * A copy of the backbone alone, reloaded without exits or hooks: the full network that
   * early exits are measured against.
   */
  plainBackbone(options: LoadOptions = {}): ScriptModule {
    if (this.backbone.isExportedProgram) {
      // The program file as loaded, with the weights as they are now.
      const plain = loadExported(this.backbone.model.path, options);
      plain.loadStateDict(this.backbone.stateDict());
      return plain.eval();
    }
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-backbone-'));
    try {
      this.backbone.save(path.join(folder, 'backbone.pt'));
      return load(path.join(folder, 'backbone.pt'), options).eval();
    } finally {
      fs.rmSync(folder, { recursive: true, force: true });
    }
  }

  /** Backbone parameters then each branch's, as `[name, tensor]` (branches as `exits.i.name`). */
  namedParameters(): Array<[string, Tensor]> {
    const named = this.backbone.namedParameters();
    this.branches.forEach((branch, index) => {
      const params = (branch as Module | ScriptModule).namedParameters();
      for (const [name, tensor] of params) named.push([`exits.${index}.${name}`, tensor]);
    });
    return named;
  }

  /** Every trainable tensor: the backbone's and the branches'. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, tensor]) => tensor);
  }

  /** Backbone buffers then each branch's (batch-norm statistics), named as `namedParameters` names. */
  namedBuffers(): Array<[string, Tensor]> {
    const named = this.backbone.namedBuffers();
    this.branches.forEach((branch, index) => {
      for (const [name, tensor] of (branch as Module | ScriptModule).namedBuffers()) named.push([`exits.${index}.${name}`, tensor]);
    });
    return named;
  }

  /** Every buffer: the backbone's and the branches'. */
  buffers(): Tensor[] {
    return this.namedBuffers().map(([, tensor]) => tensor);
  }

  /** Whether `freezeBackbone()` froze the backbone. */
  get backboneFrozen(): boolean { return this.frozen; }

  private frozen = false;

  /**
   * Freezes (or thaws) the backbone, to train the exits alone on it: its parameters get no
   * gradients, and `train()` leaves the backbone in eval mode, so its batch-norm statistics
   * and dropout stay as they are too; a frozen backbone computes the same outputs, bit for
   * bit, after any amount of exit training. (To let batch norm adapt anyway, call
   * `backbone.train()` yourself after `train()`.)
   */
  freezeBackbone(freeze = true): this {
    for (const param of this.backbone.parameters()) param.requiresGrad = !freeze;
    this.frozen = freeze;
    if (freeze) this.backbone.eval();
    return this;
  }

  /** Train mode for the branches, and for the backbone unless it is frozen (see `freezeBackbone`). */
  train(mode = true): this {
    this.backbone.train(mode && !this.frozen);
    for (const branch of this.branches) (branch as Module | ScriptModule).train(mode);
    return this;
  }

  eval(): this { return this.train(false); }

  /** Whether the model is in train mode: its branches are (the backbone too, unless frozen). */
  get training(): boolean {
    const first = this.branches[0] as Module | ScriptModule | undefined;
    return first ? first.training : this.backbone.training;
  }

  /** Forgets the gradients of the backbone's and the branches' parameters. */
  zeroGrad(): void {
    for (const param of this.parameters()) param.grad = null;
  }

  to(device: Device | string): this {
    this.backbone.to(device);
    for (const branch of this.branches) (branch as Module | ScriptModule).to(device);
    return this;
  }
}
