/**
 * Optimizers and learning-rate schedulers, as PyTorch's `torch.optim` computes them (the
 * single-tensor code paths' arithmetic, run as multi-tensor ops in one native call per
 * group), over any tensors: parameters of loaded TorchScript models and of branch modules alike.
 */
import { NativeTensor, NativeValue, binding } from '../binding';
import { Tensor } from './tensor';
import { keep } from './torch';

/** Hyper-parameters of a group; each optimizer adds its own. */
export interface GroupOptions {
  lr?: number;
  weightDecay?: number;
  [name: string]: unknown;
}

/** Parameters with their own hyper-parameters, as PyTorch's param groups. */
export interface ParamGroup extends GroupOptions {
  params: Tensor[];
}

type Groups = Tensor[] | ParamGroup[];

/** An optimizer's state for saving: per-parameter tensors by index, and group settings. */
export interface OptimizerStateDict {
  state: Record<number, Record<string, Tensor | number>>;
  paramGroups: Array<Record<string, unknown> & { params: number[] }>;
}

export abstract class Optimizer {
  readonly paramGroups: Array<ParamGroup & Record<string, unknown>>;
  /** Per-parameter state (momentum buffers, moment estimates), as PyTorch's `state`. */
  readonly state = new Map<Tensor, Record<string, Tensor | number>>();

  protected constructor(params: Groups, defaults: Record<string, unknown>) {
    const list = params as unknown[];
    if (list.length === 0) throw new Error('optimizer got an empty parameter list');
    const groups: ParamGroup[] = list[0] instanceof Tensor ? [{ params: list as Tensor[] }] : (list as ParamGroup[]);
    this.paramGroups = groups.map((group) => {
      const merged = { ...defaults, ...group, params: group.params.map((param) => keep(param)) };
      if (typeof merged.lr !== 'number' || !(merged.lr >= 0)) {
        throw new Error(`invalid learning rate: ${merged.lr} (give lr in the options or in each group)`);
      }
      return merged as ParamGroup & Record<string, unknown>;
    });
    const seen = new Set<Tensor>();
    for (const group of this.paramGroups) {
      for (const param of group.params) {
        if (!(param instanceof Tensor)) throw new TypeError('optimizer params must be Tensors');
        if (seen.has(param)) throw new Error('some parameters appear in more than one parameter group');
        seen.add(param);
      }
    }
  }

  /** Clears the gradients: to null (PyTorch 2's default) or, with `setToNone` false, to zeros. */
  zeroGrad(setToNone = true): void {
    for (const group of this.paramGroups) {
      for (const param of group.params) {
        if (setToNone) param.grad = null;
        else param.grad?.zero_();
      }
    }
  }

  /**
   * Updates every parameter that has a gradient: one native call per group, which runs
   * LibTorch's multi-tensor (`_foreach_*`) kernels, as PyTorch's `foreach` implementations,
   * instead of a call per tensor. Each element sees the operations of PyTorch's single-tensor
   * code in the same order, so the results are the same to the last bit.
   */
  step(): void {
    for (const group of this.paramGroups) {
      const states = group.params.map((param) => this.state.get(param));
      this.stepGroup(group, states).forEach((made, i) => {
        if (made === false) return;
        let state = states[i];
        if (!state) this.state.set(group.params[i], (state = {}));
        this.record(state, made);
      });
    }
  }

  /**
   * Steps `group` natively; per parameter: false (no gradient), true (stepped), or the
   * native state it made at the parameter's first step.
   */
  protected abstract stepGroup(group: ParamGroup & Record<string, unknown>,
    states: Array<Record<string, Tensor | number> | undefined>): Array<boolean | NativeValue>;

  /** Updates a stepped parameter's `state` with what its step made. */
  protected abstract record(state: Record<string, Tensor | number>, made: true | NativeValue): void;

  /** State by parameter index (in group order) and the group settings, as PyTorch's `state_dict()`. */
  stateDict(): OptimizerStateDict {
    const index = new Map<Tensor, number>();
    const paramGroups = this.paramGroups.map((group) => {
      const { params, ...settings } = group;
      return { ...settings, params: params.map((param) => { index.set(param, index.size); return index.size - 1; }) };
    });
    const state: OptimizerStateDict['state'] = {};
    for (const [param, entry] of this.state) state[index.get(param)!] = { ...entry };
    return { state, paramGroups };
  }

  /** Restores what `stateDict()` gave, onto parameters in the same order. */
  loadStateDict(stateDict: OptimizerStateDict): void {
    if (stateDict.paramGroups.length !== this.paramGroups.length) {
      throw new Error(`loaded state dict has ${stateDict.paramGroups.length} parameter groups, this optimizer has ${this.paramGroups.length}`);
    }
    const params: Tensor[] = [];
    stateDict.paramGroups.forEach((saved, i) => {
      const group = this.paramGroups[i];
      if (saved.params.length !== group.params.length) {
        throw new Error(`parameter group ${i} has ${group.params.length} parameters but the loaded one has ${saved.params.length}`);
      }
      const { params: _indices, ...settings } = saved;
      Object.assign(group, settings);
      params.push(...group.params);
    });
    this.state.clear();
    for (const [key, entry] of Object.entries(stateDict.state)) {
      const param = params[Number(key)];
      const restored: Record<string, Tensor | number> = {};
      for (const [name, value] of Object.entries(entry)) {
        if (value instanceof Tensor && value.shape.join() !== param.shape.join() && name !== 'step') {
          throw new Error(`optimizer state '${name}' of parameter ${key} has shape [${value.shape}], the parameter [${param.shape}]`);
        }
        restored[name] = value instanceof Tensor ? value.to(param.device) : value;
      }
      this.state.set(param, restored);
    }
  }
}

export interface SGDOptions extends GroupOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
  maximize?: boolean;
}

/** Stochastic gradient descent with momentum, as `torch.optim.SGD`. */
export class SGD extends Optimizer {
  constructor(params: Groups, options: SGDOptions) {
    const defaults = { momentum: 0, dampening: 0, weightDecay: 0, nesterov: false, maximize: false, ...options };
    if (defaults.nesterov && (defaults.momentum <= 0 || defaults.dampening !== 0)) {
      throw new Error('Nesterov momentum requires a momentum and zero dampening');
    }
    super(params, defaults);
  }

  protected stepGroup(group: ParamGroup & Record<string, unknown>, states: Array<Record<string, Tensor | number> | undefined>) {
    const { lr, momentum, dampening, weightDecay, nesterov, maximize } = group as unknown as Required<SGDOptions>;
    const buffers = states.map((state) => (state?.momentumBuffer as Tensor | undefined)?.native ?? null);
    return binding.sgdStep(group.params.map((param) => param.native), buffers, lr, momentum, dampening, weightDecay, nesterov, maximize);
  }

  protected record(state: Record<string, Tensor | number>, made: true | NativeValue): void {
    if (made !== true) state.momentumBuffer = keep(new Tensor(made as NativeTensor));
  }
}

export interface AdamOptions extends GroupOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  maximize?: boolean;
}

/** Adam (and, with decoupled weight decay, AdamW), as `torch.optim.Adam`/`AdamW`. */
export class Adam extends Optimizer {
  protected readonly decoupled: boolean = false;

  constructor(params: Groups, options: AdamOptions = {}, decoupledDefaults: Partial<AdamOptions> = {}) {
    super(params, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, maximize: false, ...decoupledDefaults, ...options });
  }

  protected stepGroup(group: ParamGroup & Record<string, unknown>, states: Array<Record<string, Tensor | number> | undefined>) {
    const { lr, betas, eps, weightDecay, maximize } = group as unknown as Required<AdamOptions>;
    const moment = (name: string) => states.map((state) => (state?.[name] as Tensor | undefined)?.native ?? null);
    return binding.adamStep(group.params.map((param) => param.native), moment('expAvg'), moment('expAvgSq'),
      states.map((state) => (state?.step as number | undefined) ?? 0), lr, betas[0], betas[1], eps, weightDecay, this.decoupled, maximize);
  }

  protected record(state: Record<string, Tensor | number>, made: true | NativeValue): void {
    if (made !== true) {
      const [expAvg, expAvgSq] = made as NativeTensor[];
      state.expAvg = keep(new Tensor(expAvg));
      state.expAvgSq = keep(new Tensor(expAvgSq));
    }
    state.step = ((state.step as number | undefined) ?? 0) + 1;
  }
}

/** Adam with decoupled weight decay (default 0.01), as `torch.optim.AdamW`. */
export class AdamW extends Adam {
  protected readonly decoupled: boolean = true;

  constructor(params: Groups, options: AdamOptions = {}) {
    super(params, options, { weightDecay: 1e-2 });
  }
}

/** Sets each group's learning rate by epoch (or step); call `step()` once per epoch. */
export abstract class LRScheduler {
  /** The number of `step()` calls so far. */
  lastEpoch = 0;
  readonly baseLrs: number[];

  protected constructor(readonly optimizer: Optimizer) {
    this.baseLrs = optimizer.paramGroups.map((group) => group.initialLr as number ?? group.lr!);
    optimizer.paramGroups.forEach((group, i) => { group.initialLr = this.baseLrs[i]; });
  }

  protected abstract lrAt(epoch: number, baseLr: number): number;

  step(): void {
    this.lastEpoch += 1;
    this.optimizer.paramGroups.forEach((group, i) => { group.lr = this.lrAt(this.lastEpoch, this.baseLrs[i]); });
  }

  /** The learning rates set last, per group. */
  getLastLr(): number[] { return this.optimizer.paramGroups.map((group) => group.lr!); }
}

/** Multiplies the learning rate by `gamma` every `stepSize` epochs, as `StepLR`. */
export class StepLR extends LRScheduler {
  constructor(optimizer: Optimizer, readonly stepSize: number, readonly gamma = 0.1) { super(optimizer); }
  protected lrAt(epoch: number, baseLr: number): number { return baseLr * this.gamma ** Math.floor(epoch / this.stepSize); }
}

/** Anneals the learning rate along a cosine from its base to `etaMin` over `tMax` epochs, as `CosineAnnealingLR`. */
export class CosineAnnealingLR extends LRScheduler {
  constructor(optimizer: Optimizer, readonly tMax: number, readonly etaMin = 0) { super(optimizer); }
  protected lrAt(epoch: number, baseLr: number): number {
    return this.etaMin + ((baseLr - this.etaMin) * (1 + Math.cos((Math.PI * epoch) / this.tMax))) / 2;
  }
}
