/**
 * Branch modules built from Node (`nn.Sequential(nn.AvgPool2d(3), nn.Flatten(),
 * nn.Linear(1600, 10))`), over LibTorch's C++ modules, with PyTorch's constructor
 * arguments, defaults and initialisation. Each class can be called with or without `new`,
 * and takes PyTorch's keyword arguments as a trailing options object.
 */
import { binding, NativeNnModule } from '../binding';
import { Device } from './dtype';
import { HookModule } from './jit';
import { ParameterOwner } from './parameters';
import { Tensor } from './tensor';
import { noGrad } from './torch';
import * as functional from './functional';

/** Losses and accuracy helpers, as PyTorch's `torch.nn.functional`. */
export { functional };

/** A module's architecture: enough to build it again (checkpoints store it as JSON). */
export interface ModuleSpec {
  kind: string;
  options: Record<string, unknown>;
  children?: ModuleSpec[];
}

export class Module extends ParameterOwner implements HookModule {
  /** @internal */
  readonly native: NativeNnModule;
  readonly kind: string;
  /** The constructor arguments with PyTorch's defaults applied. */
  readonly options: Readonly<Record<string, unknown>>;
  protected readonly childModules: Module[];

  protected constructor(kind: string, options: Record<string, unknown>, children: Module[] = []) {
    super();
    this.kind = kind;
    this.options = options;
    this.childModules = children;
    this.native = binding.createNnModule(kind, options, children.map((child) => child.native));
  }

  /** @internal */
  get nativeHook(): unknown { return this.native; }

  forward(input: Tensor): Tensor {
    return new Tensor(this.native.forward(input.native));
  }

  namedChildren(): Array<[string, Module]> {
    return this.childModules.map((child, index) => [String(index), child]);
  }

  /** This module as '' and every module below it, as PyTorch's `named_modules()`. */
  namedModules(): Array<[string, Module]> {
    const result: Array<[string, Module]> = [['', this]];
    for (const [name, child] of this.namedChildren()) {
      for (const [inner, module] of child.namedModules()) result.push([inner === '' ? name : `${name}.${inner}`, module]);
    }
    return result;
  }

  train(mode = true): this {
    this.native.train(mode);
    return this;
  }

  eval(): this { return this.train(false); }

  get training(): boolean { return this.native.isTraining(); }

  to(device: Device | string): this {
    this.native.to(device);
    return this;
  }

  /**
   * Parameters and buffers by name, aliasing the module's tensors, in PyTorch's
   * `state_dict()` order: module by module, each one's parameters then its buffers.
   */
  stateDict(): Record<string, Tensor> {
    const entries: Array<[string, Tensor]> = [];
    for (const [prefix, module] of this.namedModules()) {
      const own = [...module.namedParameters(false), ...module.namedBuffers(false)];
      for (const [name, tensor] of own) entries.push([prefix === '' ? name : `${prefix}.${name}`, tensor]);
    }
    return Object.fromEntries(entries);
  }

  /** @internal How load_state_dict's errors name this module. */
  get stateDictOwner(): string { return this.kind; }

  /** The architecture, for checkpoints. */
  spec(): ModuleSpec {
    const spec: ModuleSpec = { kind: this.kind, options: { ...this.options } };
    if (this.childModules.length > 0) spec.children = this.childModules.map((child) => child.spec());
    return spec;
  }

  dispose(): void {
    this.native.dispose();
    for (const child of this.childModules) child.dispose();
  }

  get isDisposed(): boolean { return this.native.isDisposed(); }

  toString(): string {
    if (this.childModules.length === 0) return `${this.kind}(${describeOptions(this.options)})`;
    const lines = this.namedChildren().map(([name, child]) => `  (${name}): ${child.toString().replace(/\n/g, '\n  ')}`);
    return `${this.kind}(\n${lines.join('\n')}\n)`;
  }
}

function describeOptions(options: Readonly<Record<string, unknown>>): string {
  return Object.entries(options).map(([key, value]) => `${key}=${JSON.stringify(value)}`).join(', ');
}

type Pair = number | [number, number];

function pair(value: Pair, name: string): [number, number] {
  const values = typeof value === 'number' ? [value, value] : value;
  if (!Array.isArray(values) || values.length !== 2 || !values.every((v) => Number.isInteger(v) && v >= 0)) {
    throw new TypeError(`${name} must be a non-negative integer or a pair of them, got ${JSON.stringify(value)}`);
  }
  return [values[0], values[1]];
}

function positiveInt(value: unknown, name: string): number {
  if (!Number.isInteger(value) || (value as number) <= 0) throw new TypeError(`${name} must be a positive integer, got ${JSON.stringify(value)}`);
  return value as number;
}

/** Reads PyTorch-style arguments: positional ones, then an optional trailing options object. */
function readArgs(kind: string, names: string[], defaults: Record<string, unknown>, args: unknown[]): Record<string, unknown> {
  const last = args[args.length - 1];
  const keywords = last !== null && typeof last === 'object' && !Array.isArray(last) ? (last as Record<string, unknown>) : undefined;
  const positional = keywords ? args.slice(0, -1) : args;
  if (positional.length > names.length) throw new TypeError(`${kind} takes at most ${names.length} positional arguments`);
  const result: Record<string, unknown> = { ...defaults };
  positional.forEach((value, index) => { if (value !== undefined) result[names[index]] = value; });
  for (const [key, value] of Object.entries(keywords ?? {})) {
    if (!names.includes(key)) throw new TypeError(`${kind} has no argument '${key}' (arguments: ${names.join(', ')})`);
    if (value !== undefined) result[key] = value;
  }
  for (const name of names) {
    if (result[name] === undefined) throw new TypeError(`${kind} is missing the argument '${name}'`);
  }
  return result;
}

class LinearModule extends Module {
  constructor(inFeatures: number, outFeatures: number, bias?: boolean | { bias?: boolean });
  constructor(...args: unknown[]) {
    const o = readArgs('Linear', ['inFeatures', 'outFeatures', 'bias'], { bias: true }, args);
    super('Linear', { inFeatures: positiveInt(o.inFeatures, 'inFeatures'), outFeatures: positiveInt(o.outFeatures, 'outFeatures'), bias: Boolean(o.bias) });
  }
}

interface Conv2dOptions {
  stride?: Pair; padding?: Pair; dilation?: Pair; groups?: number; bias?: boolean;
  paddingMode?: 'zeros' | 'reflect' | 'replicate' | 'circular';
}

/*
 * Each constructor takes its keyword form or its positional form as one union of argument
 * tuples, not as overloads: `constructible` infers the arguments from the constructor
 * type, and inference from overloads keeps only the last one.
 */
type Conv2dArgs =
  | [inChannels: number, outChannels: number, kernelSize: Pair, options?: Conv2dOptions]
  | [inChannels: number, outChannels: number, kernelSize: Pair, stride?: Pair, padding?: Pair, dilation?: Pair,
    groups?: number, bias?: boolean, paddingMode?: Conv2dOptions['paddingMode']];

class Conv2dModule extends Module {
  constructor(...args: Conv2dArgs);
  constructor(...args: unknown[]) {
    const o = readArgs('Conv2d', ['inChannels', 'outChannels', 'kernelSize', 'stride', 'padding', 'dilation', 'groups', 'bias', 'paddingMode'],
      { stride: 1, padding: 0, dilation: 1, groups: 1, bias: true, paddingMode: 'zeros' }, args);
    super('Conv2d', {
      inChannels: positiveInt(o.inChannels, 'inChannels'), outChannels: positiveInt(o.outChannels, 'outChannels'),
      kernelSize: pair(o.kernelSize as Pair, 'kernelSize'), stride: pair(o.stride as Pair, 'stride'),
      padding: pair(o.padding as Pair, 'padding'), dilation: pair(o.dilation as Pair, 'dilation'),
      groups: positiveInt(o.groups, 'groups'), bias: Boolean(o.bias), paddingMode: o.paddingMode,
    });
  }
}

interface BatchNormOptions { eps?: number; momentum?: number | null; affine?: boolean; trackRunningStats?: boolean }
type BatchNormArgs =
  | [numFeatures: number, options?: BatchNormOptions]
  | [numFeatures: number, eps?: number, momentum?: number | null, affine?: boolean, trackRunningStats?: boolean];

function batchNormOptions(kind: string, args: unknown[]): Record<string, unknown> {
  const o = readArgs(kind, ['numFeatures', 'eps', 'momentum', 'affine', 'trackRunningStats'],
    { eps: 1e-5, momentum: 0.1, affine: true, trackRunningStats: true }, args);
  return { numFeatures: positiveInt(o.numFeatures, 'numFeatures'), eps: o.eps, momentum: o.momentum, affine: Boolean(o.affine), trackRunningStats: Boolean(o.trackRunningStats) };
}

class BatchNorm1dModule extends Module {
  constructor(...args: BatchNormArgs);
  constructor(...args: unknown[]) { super('BatchNorm1d', batchNormOptions('BatchNorm1d', args)); }
}

class BatchNorm2dModule extends Module {
  constructor(...args: BatchNormArgs);
  constructor(...args: unknown[]) { super('BatchNorm2d', batchNormOptions('BatchNorm2d', args)); }
}

class ReLUModule extends Module {
  constructor(inplace?: boolean | { inplace?: boolean });
  constructor(...args: unknown[]) {
    const o = readArgs('ReLU', ['inplace'], { inplace: false }, args);
    super('ReLU', { inplace: Boolean(o.inplace) });
  }
}

interface AvgPool2dOptions { stride?: Pair | null; padding?: Pair; ceilMode?: boolean; countIncludePad?: boolean; divisorOverride?: number | null }

type AvgPool2dArgs =
  | [kernelSize: Pair, options?: AvgPool2dOptions]
  | [kernelSize: Pair, stride?: Pair | null, padding?: Pair, ceilMode?: boolean, countIncludePad?: boolean, divisorOverride?: number | null];

class AvgPool2dModule extends Module {
  constructor(...args: AvgPool2dArgs);
  constructor(...args: unknown[]) {
    const o = readArgs('AvgPool2d', ['kernelSize', 'stride', 'padding', 'ceilMode', 'countIncludePad', 'divisorOverride'],
      { stride: null, padding: 0, ceilMode: false, countIncludePad: true, divisorOverride: null }, args);
    const kernelSize = pair(o.kernelSize as Pair, 'kernelSize');
    super('AvgPool2d', {
      kernelSize, stride: o.stride === null ? kernelSize : pair(o.stride as Pair, 'stride'), padding: pair(o.padding as Pair, 'padding'),
      ceilMode: Boolean(o.ceilMode), countIncludePad: Boolean(o.countIncludePad), divisorOverride: o.divisorOverride,
    });
  }
}

interface MaxPool2dOptions { stride?: Pair | null; padding?: Pair; dilation?: Pair; ceilMode?: boolean }

type MaxPool2dArgs =
  | [kernelSize: Pair, options?: MaxPool2dOptions]
  | [kernelSize: Pair, stride?: Pair | null, padding?: Pair, dilation?: Pair, ceilMode?: boolean];

class MaxPool2dModule extends Module {
  constructor(...args: MaxPool2dArgs);
  constructor(...args: unknown[]) {
    const o = readArgs('MaxPool2d', ['kernelSize', 'stride', 'padding', 'dilation', 'ceilMode'],
      { stride: null, padding: 0, dilation: 1, ceilMode: false }, args);
    const kernelSize = pair(o.kernelSize as Pair, 'kernelSize');
    super('MaxPool2d', {
      kernelSize, stride: o.stride === null ? kernelSize : pair(o.stride as Pair, 'stride'), padding: pair(o.padding as Pair, 'padding'),
      dilation: pair(o.dilation as Pair, 'dilation'), ceilMode: Boolean(o.ceilMode),
    });
  }
}

class AdaptiveAvgPool2dModule extends Module {
  constructor(outputSize: Pair);
  constructor(...args: unknown[]) {
    const o = readArgs('AdaptiveAvgPool2d', ['outputSize'], {}, args);
    super('AdaptiveAvgPool2d', { outputSize: pair(o.outputSize as Pair, 'outputSize') });
  }
}

class FlattenModule extends Module {
  constructor(startDim?: number | { startDim?: number; endDim?: number }, endDim?: number);
  constructor(...args: unknown[]) {
    const o = readArgs('Flatten', ['startDim', 'endDim'], { startDim: 1, endDim: -1 }, args);
    super('Flatten', { startDim: o.startDim, endDim: o.endDim });
  }
}

class DropoutModule extends Module {
  constructor(p?: number | { p?: number; inplace?: boolean }, inplace?: boolean);
  constructor(...args: unknown[]) {
    const o = readArgs('Dropout', ['p', 'inplace'], { p: 0.5, inplace: false }, args);
    const p = o.p as number;
    if (typeof p !== 'number' || p < 0 || p > 1) throw new RangeError(`dropout probability has to be between 0 and 1, but got ${p}`);
    super('Dropout', { p, inplace: Boolean(o.inplace) });
  }
}

class IdentityModule extends Module {
  constructor() { super('Identity', {}); }
}

class TanhModule extends Module {
  constructor() { super('Tanh', {}); }
}

class GELUModule extends Module {
  /** `approximate: 'tanh'` is the tanh approximation BERT's original code used; 'none' the exact erf form. */
  constructor(approximate?: 'none' | 'tanh' | { approximate?: 'none' | 'tanh' });
  constructor(...args: unknown[]) {
    const o = readArgs('GELU', ['approximate'], { approximate: 'none' }, args);
    if (o.approximate !== 'none' && o.approximate !== 'tanh') throw new TypeError(`GELU: approximate must be 'none' or 'tanh', got ${JSON.stringify(o.approximate)}`);
    super('GELU', { approximate: o.approximate });
  }
}

interface LayerNormOptions { eps?: number; elementwiseAffine?: boolean }
type LayerNormArgs =
  | [normalizedShape: number | number[], options?: LayerNormOptions]
  | [normalizedShape: number | number[], eps?: number, elementwiseAffine?: boolean];

class LayerNormModule extends Module {
  constructor(...args: LayerNormArgs);
  constructor(...args: unknown[]) {
    const o = readArgs('LayerNorm', ['normalizedShape', 'eps', 'elementwiseAffine'], { eps: 1e-5, elementwiseAffine: true }, args);
    const shape = typeof o.normalizedShape === 'number' ? [o.normalizedShape] : o.normalizedShape;
    if (!Array.isArray(shape) || shape.length === 0) throw new TypeError(`LayerNorm: normalizedShape must be a positive integer or a list of them, got ${JSON.stringify(o.normalizedShape)}`);
    shape.forEach((size, i) => positiveInt(size, `LayerNorm: normalizedShape[${i}]`));
    if (typeof o.eps !== 'number' || !(o.eps > 0)) throw new TypeError(`LayerNorm: eps must be a positive number, got ${JSON.stringify(o.eps)}`);
    super('LayerNorm', { normalizedShape: shape, eps: o.eps, elementwiseAffine: Boolean(o.elementwiseAffine) });
  }
}

interface EmbeddingOptions { paddingIdx?: number | null }
type EmbeddingArgs =
  | [numEmbeddings: number, embeddingDim: number, options?: EmbeddingOptions]
  | [numEmbeddings: number, embeddingDim: number, paddingIdx?: number | null];

class EmbeddingModule extends Module {
  /** `paddingIdx`: the row padding tokens look up, zero and never trained, as in PyTorch (negative counts from the end). */
  constructor(...args: EmbeddingArgs);
  constructor(...args: unknown[]) {
    const o = readArgs('Embedding', ['numEmbeddings', 'embeddingDim', 'paddingIdx'], { paddingIdx: null }, args);
    const count = positiveInt(o.numEmbeddings, 'Embedding: numEmbeddings');
    let padding = o.paddingIdx as number | null;
    if (padding !== null) {
      if (!Number.isInteger(padding) || padding >= count || padding < -count) {
        throw new RangeError(`Embedding: paddingIdx must be within num_embeddings (${count}), got ${JSON.stringify(padding)}`);
      }
      if (padding < 0) padding += count;
    }
    super('Embedding', { numEmbeddings: count, embeddingDim: positiveInt(o.embeddingDim, 'Embedding: embeddingDim'), paddingIdx: padding });
  }
}

/**
 * `x.select(dim, index)`, as `torch.select`: a branch's head on one position of a sequence
 * (DeeBERT's off-ramps read the [CLS] token: `Select(1, 0)` on [batch, tokens, features]).
 * PyTorch has no module for it; a Python head writes `x[:, 0]`.
 */
class SelectModule extends Module {
  constructor(dim: number, index: number);
  constructor(...args: unknown[]) {
    const o = readArgs('Select', ['dim', 'index'], {}, args);
    if (!Number.isInteger(o.dim) || !Number.isInteger(o.index)) throw new TypeError(`Select: dim and index must be integers, got ${JSON.stringify([o.dim, o.index])}`);
    super('Select', { dim: o.dim, index: o.index });
  }
}

class SequentialModule extends Module {
  constructor(...modules: Module[]) {
    modules.forEach((module, index) => {
      if (!(module instanceof Module)) throw new TypeError(`Sequential: argument ${index} is not an nn module`);
    });
    super('Sequential', {}, modules);
  }

  /** The child at `index`. */
  at(index: number): Module {
    const child = this.childModules[index < 0 ? index + this.childModules.length : index];
    if (!child) throw new RangeError(`index ${index} is out of range for a Sequential of ${this.childModules.length}`);
    return child;
  }

  get length(): number { return this.childModules.length; }
}

type Constructible<A extends unknown[], T> = { new (...args: A): T; (...args: A): T; readonly prototype: T };

/** Lets `nn.Linear(4, 2)` work as in PyTorch code, with or without `new`. */
function constructible<A extends unknown[], T>(cls: new (...args: A) => T): Constructible<A, T> {
  const factory = function (...args: A): T { return new cls(...args); };
  factory.prototype = cls.prototype;
  Object.defineProperty(factory, 'name', { value: cls.name.replace(/Module$/, '') });
  return factory as unknown as Constructible<A, T>;
}

type Args<C> = C extends { new (...args: infer A): unknown } ? A : never;

export const Linear = constructible<Args<typeof LinearModule>, LinearModule>(LinearModule);
export type Linear = LinearModule;
export const Conv2d = constructible<Args<typeof Conv2dModule>, Conv2dModule>(Conv2dModule);
export type Conv2d = Conv2dModule;
export const BatchNorm1d = constructible<Args<typeof BatchNorm1dModule>, BatchNorm1dModule>(BatchNorm1dModule);
export type BatchNorm1d = BatchNorm1dModule;
export const BatchNorm2d = constructible<Args<typeof BatchNorm2dModule>, BatchNorm2dModule>(BatchNorm2dModule);
export type BatchNorm2d = BatchNorm2dModule;
export const ReLU = constructible<Args<typeof ReLUModule>, ReLUModule>(ReLUModule);
export type ReLU = ReLUModule;
export const AvgPool2d = constructible<Args<typeof AvgPool2dModule>, AvgPool2dModule>(AvgPool2dModule);
export type AvgPool2d = AvgPool2dModule;
export const MaxPool2d = constructible<Args<typeof MaxPool2dModule>, MaxPool2dModule>(MaxPool2dModule);
export type MaxPool2d = MaxPool2dModule;
export const AdaptiveAvgPool2d = constructible<Args<typeof AdaptiveAvgPool2dModule>, AdaptiveAvgPool2dModule>(AdaptiveAvgPool2dModule);
export type AdaptiveAvgPool2d = AdaptiveAvgPool2dModule;
export const Flatten = constructible<Args<typeof FlattenModule>, FlattenModule>(FlattenModule);
export type Flatten = FlattenModule;
export const Dropout = constructible<Args<typeof DropoutModule>, DropoutModule>(DropoutModule);
export type Dropout = DropoutModule;
export const Identity = constructible<Args<typeof IdentityModule>, IdentityModule>(IdentityModule);
export type Identity = IdentityModule;
export const Tanh = constructible<Args<typeof TanhModule>, TanhModule>(TanhModule);
export type Tanh = TanhModule;
export const GELU = constructible<Args<typeof GELUModule>, GELUModule>(GELUModule);
export type GELU = GELUModule;
export const LayerNorm = constructible<Args<typeof LayerNormModule>, LayerNormModule>(LayerNormModule);
export type LayerNorm = LayerNormModule;
export const Embedding = constructible<Args<typeof EmbeddingModule>, EmbeddingModule>(EmbeddingModule);
export type Embedding = EmbeddingModule;
export const Select = constructible<Args<typeof SelectModule>, SelectModule>(SelectModule);
export type Select = SelectModule;
export const Sequential = constructible<Module[], SequentialModule>(SequentialModule);
export type Sequential = SequentialModule;

/** Builds a module again from its `spec()` (fresh parameters: load a state dict after). */
export function fromSpec(spec: ModuleSpec): Module {
  const children = (spec.children ?? []).map(fromSpec);
  if (spec.kind === 'Sequential') return new SequentialModule(...children);
  // Every constructor also takes all of its arguments as one options object.
  const classes: Record<string, new (options: never) => Module> = {
    Linear: LinearModule, Conv2d: Conv2dModule, BatchNorm1d: BatchNorm1dModule, BatchNorm2d: BatchNorm2dModule,
    ReLU: ReLUModule, AvgPool2d: AvgPool2dModule, MaxPool2d: MaxPool2dModule, AdaptiveAvgPool2d: AdaptiveAvgPool2dModule,
    Flatten: FlattenModule, Dropout: DropoutModule, Identity: IdentityModule, Tanh: TanhModule, GELU: GELUModule,
    LayerNorm: LayerNormModule, Embedding: EmbeddingModule, Select: SelectModule,
  } as unknown as Record<string, new (options: never) => Module>;
  const cls = classes[spec.kind];
  if (!cls) throw new Error(`unknown module kind '${spec.kind}' in spec`);
  return new cls(spec.options as never);
}
