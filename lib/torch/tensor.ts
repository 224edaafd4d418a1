/**
 * Tensors: a thin TypeScript face over LibTorch's at::Tensor. Every operation is one call
 * of the ATen operator of the same name, through the dispatcher (`binding.callOp`).
 */
import { binding, NativeTensor } from '../binding';
import { DType, Device, TYPED_ARRAY_DTYPE, isDType, isFloatingDType } from './dtype';
import { track } from './scope';

/** A nested array of numbers or booleans, as `toArray()` returns and `tensor()` takes. */
export type NestedArray = number | boolean | NestedArray[];

/** Values from `data()`: a copy of the tensor's elements in row-major order. */
export type TypedArray = ReturnType<NativeTensor['data']>;

/** Where to create a tensor and of which type. */
export interface TensorOptions {
  dtype?: DType;
  device?: Device | string;
  requiresGrad?: boolean;
}

/** A tensor, or a number where PyTorch accepts a Python scalar. */
export type TensorOrScalar = Tensor | number;

/** Wraps what the addon returned: native tensors become Tensors, recursively. */
export function fromNative(value: unknown): unknown {
  if (value instanceof binding.NativeTensor) return new Tensor(value as NativeTensor);
  if (Array.isArray(value)) return value.map(fromNative);
  if (value !== null && typeof value === 'object') {
    const result: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) result[key] = fromNative(item);
    return result;
  }
  return value;
}

/** Unwraps Tensors for the addon, recursively. */
export function toNative(value: unknown): unknown {
  if (value instanceof Tensor) return value.native;
  if (Array.isArray(value)) return value.map(toNative);
  if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const result: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) result[key] = toNative(item);
    return result;
  }
  return value;
}

/** `[name, tensor]` pairs from the addon's `[name, native]` pairs. */
export function namedTensors(list: Array<[string, NativeTensor]>): Array<[string, Tensor]> {
  return list.map(([name, native]) => [name, new Tensor(native)]);
}

/** Calls the ATen operator `aten::name.overload`, wrapping tensors both ways. */
export function callOp(name: string, overload: string, args: unknown[], kwargs?: Record<string, unknown>): unknown {
  const native = binding.callOp(`aten::${name}`, overload, args.map(toNative), kwargs && (toNative(kwargs) as Record<string, unknown>));
  return fromNative(native);
}

function tensorOp(name: string, overload: string, args: unknown[], kwargs?: Record<string, unknown>): Tensor {
  return callOp(name, overload, args, kwargs) as Tensor;
}

function pairOp(name: string, overload: string, args: unknown[]): { values: Tensor; indices: Tensor } {
  const [values, indices] = callOp(name, overload, args) as [Tensor, Tensor];
  return { values, indices };
}

/** Tensor-or-scalar overloads: `add.Tensor` for a tensor, `add.Scalar` for a number. */
function binary(name: string, self: Tensor, other: TensorOrScalar, extra: unknown[] = []): Tensor {
  return tensorOp(name, other instanceof Tensor ? 'Tensor' : 'Scalar', [self, other, ...extra]);
}

/** PyTorch's print options: summarise past 1000 elements, showing 3 at each edge. */
const SUMMARY_THRESHOLD = 1000;
const EDGE_ITEMS = 3;

function formatNumber(value: number | boolean | bigint, floating: boolean): string {
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'bigint') return value.toString();
  if (!floating) return String(value);
  if (Number.isNaN(value)) return 'nan';
  if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
  if (Number.isInteger(value) && Math.abs(value) < 1e8) return `${value}.`;
  const fixed = value.toFixed(4);
  return Math.abs(value) >= 1e-4 && Math.abs(value) < 1e8 ? fixed : value.toExponential(4);
}

export class Tensor {
  /** @internal */
  readonly native: NativeTensor;

  /** @internal Tensors are made by the torch functions, never by `new`. */
  constructor(native: NativeTensor) {
    this.native = native;
    track(this);
  }

  /** The size of each dimension. */
  get shape(): number[] { return this.native.shape(); }
  /** The number of dimensions. */
  get ndim(): number { return this.shape.length; }
  get dtype(): DType { return this.native.dtype() as DType; }
  get device(): string { return this.native.device(); }
  get requiresGrad(): boolean { return this.native.requiresGrad(); }
  set requiresGrad(value: boolean) { this.native.setRequiresGrad(value); }
  /** The gradient accumulated by `backward()`, or null. */
  get grad(): Tensor | null {
    const grad = this.native.grad();
    return grad === null ? null : new Tensor(grad);
  }
  set grad(value: Tensor | null) {
    if (value !== null && value.shape.join() !== this.shape.join()) {
      throw new Error(`assigned grad has data of a different size: [${value.shape}] for a tensor of [${this.shape}]`);
    }
    this.native.setGrad(value === null ? null : value.native);
  }
  get isLeaf(): boolean { return this.native.isLeaf(); }
  /** @internal It left every tidy scope alive: V8 learns the memory it holds now. */
  escape(): void { this.native.reportMemory(); }
  /** Whether `dispose()` was called. */
  get isDisposed(): boolean { return this.native.isDisposed(); }

  /** The number of elements. */
  numel(): number { return this.shape.reduce((a, b) => a * b, 1); }
  /** The size of dimension `dim`, or the shape. */
  size(): number[];
  size(dim: number): number;
  size(dim?: number): number[] | number {
    const shape = this.shape;
    if (dim === undefined) return shape;
    const index = dim < 0 ? dim + shape.length : dim;
    if (index < 0 || index >= shape.length) throw new RangeError(`dimension ${dim} out of range for a ${shape.length}-d tensor`);
    return shape[index];
  }

  /** A copy of the elements in row-major order (int64 as BigInt64Array, bool as Uint8Array). */
  data(): TypedArray { return this.native.data(); }
  /** The value of a one-element tensor. */
  item(): number | boolean { return this.native.item(); }
  /** The elements as nested arrays (int64 as numbers, bool as booleans). */
  toArray(): NestedArray {
    const data = this.data();
    const isBool = this.dtype === 'bool';
    const values: Array<number | boolean> = Array.from(data as ArrayLike<number | bigint>, (v) => (isBool ? v !== 0 : Number(v)));
    const shape = this.shape;
    if (shape.length === 0) return values[0];
    let offset = 0;
    const build = (dim: number): NestedArray[] => {
      const out: NestedArray[] = [];
      for (let i = 0; i < shape[dim]; i++) out.push(dim === shape.length - 1 ? values[offset++] : build(dim + 1));
      return out;
    };
    return build(0);
  }

  /**
   * PyTorch's printed form, e.g. `tensor([[1., 2.], [3., 4.]], requires_grad=True)`; past
   * 1000 elements only the first and last 3 of each dimension, as PyTorch summarises.
   */
  toString(): string {
    if (this.isDisposed) return 'tensor(<disposed>)';
    const floating = isFloatingDType(this.dtype);
    const shape = this.shape;
    const summarise = this.numel() > SUMMARY_THRESHOLD;
    const data = this.data();
    const format = (index: number) => formatNumber(this.dtype === 'bool' ? data[index] !== 0 : data[index] as number | bigint, floating);
    const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
    const shown = (dim: number): Array<number | null> => {
      const all = Array.from({ length: shape[dim] }, (_, i) => i);
      if (!summarise || shape[dim] <= 2 * EDGE_ITEMS) return all;
      return [...all.slice(0, EDGE_ITEMS), null, ...all.slice(-EDGE_ITEMS)];
    };
    const collect = (dim: number, base: number, out: string[]): void => {
      if (dim === shape.length) { out.push(format(base)); return; }
      for (const i of shown(dim)) if (i !== null) collect(dim + 1, base + i * strides[dim], out);
    };
    const texts: string[] = [];
    collect(0, 0, texts);
    const width = Math.max(0, ...texts.map((v) => v.length));
    const build = (dim: number, base: number, indent: number): string => {
      if (shape.length === 0) return format(0);
      const items = shown(dim).map((i) => {
        if (i === null) return dim === shape.length - 1 ? ' ...' : '...';
        const index = base + i * strides[dim];
        return dim === shape.length - 1 ? format(index).padStart(width) : build(dim + 1, index, indent + 1);
      });
      const separator = dim === shape.length - 1 ? ', ' : ',' + '\n'.repeat(shape.length - 1 - dim) + ' '.repeat(indent + 1);
      return '[' + items.join(separator) + ']';
    };
    const extras: string[] = [];
    if (this.device !== 'cpu') extras.push(`device='${this.device}'`);
    const defaultDtype = floating ? 'float32' : this.dtype === 'bool' ? 'bool' : 'int64';
    if (this.dtype !== defaultDtype || this.numel() === 0) extras.push(`dtype=torch.${this.dtype}`);
    if (this.requiresGrad) extras.push('requires_grad=True');
    return `tensor(${build(0, 0, 7)}${extras.map((e) => ', ' + e).join('')})`;
  }

  /** Moves to a device or converts to a dtype (a new tensor unless nothing changes). */
  to(target: DType | Device | string): Tensor {
    if (isDType(target)) return tensorOp('to', 'dtype', [this, target]);
    return tensorOp('to', 'device', [this, target, this.dtype]);
  }
  cpu(): Tensor { return this.to('cpu'); }
  cuda(index = 0): Tensor { return this.to(`cuda:${index}`); }
  float(): Tensor { return this.to('float32'); }
  double(): Tensor { return this.to('float64'); }
  long(): Tensor { return this.to('int64'); }
  int(): Tensor { return this.to('int32'); }
  bool(): Tensor { return this.to('bool'); }

  add(other: TensorOrScalar, alpha = 1): Tensor { return binary('add', this, other, [alpha]); }
  sub(other: TensorOrScalar, alpha = 1): Tensor { return binary('sub', this, other, [alpha]); }
  mul(other: TensorOrScalar): Tensor { return binary('mul', this, other); }
  div(other: TensorOrScalar): Tensor { return binary('div', this, other); }
  pow(exponent: TensorOrScalar): Tensor {
    return tensorOp('pow', exponent instanceof Tensor ? 'Tensor_Tensor' : 'Tensor_Scalar', [this, exponent]);
  }
  neg(): Tensor { return tensorOp('neg', '', [this]); }
  abs(): Tensor { return tensorOp('abs', '', [this]); }
  sqrt(): Tensor { return tensorOp('sqrt', '', [this]); }
  log(): Tensor { return tensorOp('log', '', [this]); }
  exp(): Tensor { return tensorOp('exp', '', [this]); }
  clamp(min?: number, max?: number): Tensor { return tensorOp('clamp', '', [this, min ?? null, max ?? null]); }
  matmul(other: Tensor): Tensor { return tensorOp('matmul', '', [this, other]); }

  eq(other: TensorOrScalar): Tensor { return binary('eq', this, other); }
  ne(other: TensorOrScalar): Tensor { return binary('ne', this, other); }
  lt(other: TensorOrScalar): Tensor { return binary('lt', this, other); }
  le(other: TensorOrScalar): Tensor { return binary('le', this, other); }
  gt(other: TensorOrScalar): Tensor { return binary('gt', this, other); }
  ge(other: TensorOrScalar): Tensor { return binary('ge', this, other); }

  /** Sum of all elements, or along `dim`. */
  sum(dim?: number | number[], keepdim = false, options: { dtype?: DType } = {}): Tensor {
    if (dim === undefined) return tensorOp('sum', '', [this], { dtype: options.dtype ?? null });
    return tensorOp('sum', 'dim_IntList', [this, typeof dim === 'number' ? [dim] : dim, keepdim], { dtype: options.dtype ?? null });
  }
  /** Mean of all elements, or along `dim`. */
  mean(dim?: number | number[], keepdim = false): Tensor {
    if (dim === undefined) return tensorOp('mean', '', [this]);
    return tensorOp('mean', 'dim', [this, typeof dim === 'number' ? [dim] : dim, keepdim]);
  }
  /** The largest element, or the largest along `dim` with its index. */
  max(): Tensor;
  max(dim: number, keepdim?: boolean): { values: Tensor; indices: Tensor };
  max(dim?: number, keepdim = false): Tensor | { values: Tensor; indices: Tensor } {
    return dim === undefined ? tensorOp('max', '', [this]) : pairOp('max', 'dim', [this, dim, keepdim]);
  }
  min(): Tensor;
  min(dim: number, keepdim?: boolean): { values: Tensor; indices: Tensor };
  min(dim?: number, keepdim = false): Tensor | { values: Tensor; indices: Tensor } {
    return dim === undefined ? tensorOp('min', '', [this]) : pairOp('min', 'dim', [this, dim, keepdim]);
  }
  argmax(dim?: number, keepdim = false): Tensor { return tensorOp('argmax', '', [this, dim ?? null, keepdim]); }
  argmin(dim?: number, keepdim = false): Tensor { return tensorOp('argmin', '', [this, dim ?? null, keepdim]); }
  /** The `k` largest (or smallest) elements along `dim`. */
  topk(k: number, dim = -1, largest = true, sorted = true): { values: Tensor; indices: Tensor } {
    return pairOp('topk', '', [this, k, dim, largest, sorted]);
  }
  softmax(dim: number): Tensor { return tensorOp('softmax', 'int', [this, dim]); }
  logSoftmax(dim: number): Tensor { return tensorOp('log_softmax', 'int', [this, dim]); }

  reshape(...shape: number[] | [number[]]): Tensor { return tensorOp('reshape', '', [this, flatShape(shape)]); }
  view(...shape: number[] | [number[]]): Tensor { return tensorOp('view', '', [this, flatShape(shape)]); }
  flatten(startDim = 0, endDim = -1): Tensor { return tensorOp('flatten', 'using_ints', [this, startDim, endDim]); }
  squeeze(dim?: number): Tensor { return dim === undefined ? tensorOp('squeeze', '', [this]) : tensorOp('squeeze', 'dim', [this, dim]); }
  unsqueeze(dim: number): Tensor { return tensorOp('unsqueeze', '', [this, dim]); }
  transpose(dim0: number, dim1: number): Tensor { return tensorOp('transpose', 'int', [this, dim0, dim1]); }
  permute(...dims: number[]): Tensor { return tensorOp('permute', '', [this, dims]); }
  contiguous(): Tensor { return tensorOp('contiguous', '', [this]); }
  /** `length` elements of dimension `dim` from `start` (a view). */
  narrow(dim: number, start: number, length: number): Tensor { return tensorOp('narrow', '', [this, dim, start, length]); }
  /** Elements `start` to `end` (exclusive) of `dim`, every `step`-th (a view). */
  slice(dim = 0, start?: number, end?: number, step = 1): Tensor { return tensorOp('slice', 'Tensor', [this, dim, start ?? null, end ?? null, step]); }
  /** The slice at `index` of dimension `dim`, without that dimension (a view). */
  select(dim: number, index: number): Tensor { return tensorOp('select', 'int', [this, dim, index]); }
  indexSelect(dim: number, index: Tensor): Tensor { return tensorOp('index_select', '', [this, dim, index]); }
  /** Elements where `mask` is true, flattened. */
  maskedSelect(mask: Tensor): Tensor { return tensorOp('masked_select', '', [this, mask]); }
  gather(dim: number, index: Tensor): Tensor { return tensorOp('gather', '', [this, dim, index]); }

  /** A tensor sharing the data but cut from the autograd graph. */
  detach(): Tensor { return tensorOp('detach', '', [this]); }
  clone(): Tensor { return tensorOp('clone', '', [this]); }
  /** Copies `source` into this tensor in place (broadcasting). */
  copy_(source: Tensor): Tensor { tensorOp('copy_', '', [this, source]); return this; }
  /** In place: `this += alpha * other`. */
  add_(other: TensorOrScalar, alpha = 1): Tensor { binary('add_', this, other, [alpha]); return this; }
  /** In place: `this -= alpha * other`. */
  sub_(other: TensorOrScalar, alpha = 1): Tensor { binary('sub_', this, other, [alpha]); return this; }
  /** In place: `this *= other`. */
  mul_(other: TensorOrScalar): Tensor { binary('mul_', this, other); return this; }
  /** In place: `this /= other`. */
  div_(other: TensorOrScalar): Tensor { binary('div_', this, other); return this; }
  /** In place: `this += value * t1 * t2`. */
  addcmul_(t1: Tensor, t2: Tensor, value = 1): Tensor { tensorOp('addcmul_', '', [this, t1, t2, value]); return this; }
  /** In place: `this += value * t1 / t2`. */
  addcdiv_(t1: Tensor, t2: Tensor, value = 1): Tensor { tensorOp('addcdiv_', '', [this, t1, t2, value]); return this; }
  /** In place: row `index[i]` of dimension `dim` becomes slice `i` of `source`. */
  indexCopy_(dim: number, index: Tensor, source: Tensor): Tensor { tensorOp('index_copy_', '', [this, dim, index, source]); return this; }
  /** Sets every element to zero in place. */
  zero_(): Tensor { tensorOp('zero_', '', [this]); return this; }
  /** Marks this tensor to require gradients; returns this. */
  requiresGrad_(requiresGrad = true): Tensor { this.requiresGrad = requiresGrad; return this; }
  /** Computes gradients of this tensor (a scalar, unless `gradient` is given) into the leaves' `grad`. */
  backward(gradient?: Tensor, options: { retainGraph?: boolean } = {}): void {
    this.native.backward(gradient ? gradient.native : null, options.retainGraph ?? false);
  }
  /** Whether both are the same tensor (same storage and view). */
  isSame(other: Tensor): boolean { return this.native.sameAs(other.native); }
  /** Releases the native memory now; using the tensor afterwards is an error. */
  dispose(): void { this.native.dispose(); }
}

function flatShape(shape: number[] | [number[]]): number[] {
  return Array.isArray(shape[0]) ? (shape[0] as number[]) : (shape as number[]);
}
