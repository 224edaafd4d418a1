/**
 * The `torch` namespace: tensor creation, the functions PyTorch keeps at top level,
 * threads, seeds, grad mode, devices and versions.
 */
import { MemoryStats, binary, binding } from '../binding';
import { checkBoolean, checkInteger, describeValue } from '../util/check';
import { DType, Device, TYPED_ARRAY_DTYPE } from './dtype';
import { keep, tidy } from './scope';
import { NestedArray, Tensor, TensorOptions, callOp } from './tensor';

function nativeOptions(options: TensorOptions, fallback: DType = 'float32'): Record<string, unknown> {
  return { dtype: options.dtype ?? fallback, device: options.device ?? null };
}

function finish(tensor: Tensor, options: TensorOptions): Tensor {
  if (options.requiresGrad) tensor.requiresGrad = true;
  return tensor;
}

function inferShape(data: NestedArray): number[] {
  const shape: number[] = [];
  let level: NestedArray = data;
  while (Array.isArray(level)) {
    shape.push(level.length);
    if (level.length === 0) break;
    level = level[0];
  }
  return shape;
}

function flatten(data: NestedArray, shape: number[], dim: number, out: Array<number | boolean>, path: string): void {
  if (dim === shape.length) {
    if (Array.isArray(data)) throw new TypeError(`tensor(): ragged nested array at ${path}: expected a number`);
    if (typeof data !== 'number' && typeof data !== 'boolean') {
      throw new TypeError(`tensor(): element at ${path} is ${typeof data}, expected a number or boolean`);
    }
    out.push(data);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[dim]) {
    throw new TypeError(`tensor(): ragged nested array at ${path}: expected ${shape[dim]} elements like the first row`);
  }
  data.forEach((item, i) => flatten(item, shape, dim + 1, out, `${path}[${i}]`));
}

/**
 * A tensor from a TypedArray, nested arrays or a scalar. Like `torch.tensor`, nested
 * integers make int64, other numbers float32 and booleans bool unless `dtype` says
 * otherwise; a TypedArray keeps its own type. Give `shape` for a flat TypedArray.
 */
export function tensor(data: NestedArray | ArrayBufferView, options: TensorOptions & { shape?: number[] } = {}): Tensor {
  let result: Tensor;
  if (ArrayBuffer.isView(data)) {
    const length = (data as unknown as { length: number }).length;
    result = new Tensor(binding.fromTypedArray(data, options.shape ?? [length], options.dtype));
  } else {
    const shape = inferShape(data);
    const values: Array<number | boolean> = [];
    flatten(data, shape, 0, values, 'data');
    const allBool = values.length > 0 && values.every((v) => typeof v === 'boolean');
    const allInt = values.length > 0 && values.every((v) => typeof v === 'number' && Number.isInteger(v));
    const dtype: DType = options.dtype ?? (allBool ? 'bool' : allInt ? 'int64' : 'float32');
    // Doubles hold every float32 and every int up to 2^53 exactly; the addon converts.
    result = new Tensor(binding.fromTypedArray(new Float64Array(values.map(Number)), options.shape ?? shape, dtype));
  }
  if (options.device && options.device !== 'cpu') result = result.to(options.device);
  return finish(result, options);
}

/** The dtype a TypedArray becomes. */
export function dtypeOf(array: ArrayBufferView): DType {
  for (const [type, dtype] of TYPED_ARRAY_DTYPE) if (array instanceof type) return dtype;
  throw new TypeError('unsupported TypedArray type');
}

export function zeros(shape: number[], options: TensorOptions = {}): Tensor {
  return finish(callOp('zeros', '', [shape], nativeOptions(options)) as Tensor, options);
}
export function ones(shape: number[], options: TensorOptions = {}): Tensor {
  return finish(callOp('ones', '', [shape], nativeOptions(options)) as Tensor, options);
}
export function full(shape: number[], value: number | boolean, options: TensorOptions = {}): Tensor {
  const fallback: DType = typeof value === 'boolean' ? 'bool' : 'float32';
  return finish(callOp('full', '', [shape, value], nativeOptions(options, fallback)) as Tensor, options);
}
/** Uniform samples in [0, 1). */
export function rand(shape: number[], options: TensorOptions = {}): Tensor {
  return finish(callOp('rand', '', [shape], nativeOptions(options)) as Tensor, options);
}
/** Standard normal samples. */
export function randn(shape: number[], options: TensorOptions = {}): Tensor {
  return finish(callOp('randn', '', [shape], nativeOptions(options)) as Tensor, options);
}
/** Integers uniform in [low, high), int64 unless `dtype` says otherwise. */
export function randint(low: number, high: number, shape: number[], options: TensorOptions = {}): Tensor {
  return finish(callOp('randint', 'low', [low, high, shape], nativeOptions(options, 'int64')) as Tensor, options);
}
/** `arange(end)` or `arange(start, end, step)`: int64 for integer arguments, else float32. */
export function arange(start: number, end?: number, step = 1, options: TensorOptions = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  const integral = [start, end, step].every(Number.isInteger);
  return finish(callOp('arange', 'start_step', [start, end, step], nativeOptions(options, integral ? 'int64' : 'float32')) as Tensor, options);
}
/** A random permutation of 0..n-1 (int64). */
export function randperm(n: number, options: TensorOptions = {}): Tensor {
  return finish(callOp('randperm', '', [n], nativeOptions(options, 'int64')) as Tensor, options);
}
/** Concatenates along an existing dimension. */
export function cat(tensors: Tensor[], dim = 0): Tensor { return callOp('cat', '', [tensors, dim]) as Tensor; }
/** Stacks along a new dimension. */
export function stack(tensors: Tensor[], dim = 0): Tensor { return callOp('stack', '', [tensors, dim]) as Tensor; }
/** Elementwise choice: `x` where `condition`, else `y`. */
export function where(condition: Tensor, x: Tensor, y: Tensor): Tensor { return callOp('where', 'self', [condition, x, y]) as Tensor; }
/** Whether all elements are close (`|a - b| <= atol + rtol * |b|`). */
export function allclose(a: Tensor, b: Tensor, rtol = 1e-5, atol = 1e-8): boolean {
  return callOp('allclose', '', [a, b, rtol, atol]) as boolean;
}

/** Seeds LibTorch's random generators (CPU and CUDA). */
export function manualSeed(seed: number): void { binding.manualSeed(checkInteger(seed, 'manualSeed: seed')); }
/** Sets the number of threads for intra-op parallelism. */
export function setNumThreads(threads: number): void {
  if (!Number.isInteger(threads) || threads < 1) {
    throw new TypeError(`setNumThreads needs a positive number of threads (an integer of at least 1), got ${describeValue(threads)}`);
  }
  binding.setNumThreads(threads);
}
export function getNumThreads(): number { return binding.getNumThreads(); }

/**
 * Gives the free blocks of the CPU block cache back to the system, as PyTorch's
 * `torch.cuda.empty_cache()` does for GPU memory; returns the bytes released. Tensors in use
 * are not touched. The library keeps freed CPU blocks of 64 KiB and more for reuse, so that
 * a training step does not page-fault its working set in again each time (see the README's
 * "Performance on CPU"); TEE_CPU_CACHE_MB limits how much it keeps, and 0 turns it off.
 */
export function emptyCache(): number { return binding.emptyCache(); }
/** What CPU tensor memory is in use and kept for reuse, as `torch.cuda.memory_stats()` for the GPU. */
export function memoryStats(): MemoryStats { return binding.memoryStats(); }
/** Starts the peaks of `memoryStats()` again from the current values. */
export function resetPeakMemoryStats(): void { binding.resetPeakMemoryStats(); }
export function isGradEnabled(): boolean { return binding.isGradEnabled(); }
export function setGradEnabled(enabled: boolean): void { binding.setGradEnabled(enabled); }

/** Runs `fn` with gradient recording off, restoring it when `fn` returns or throws. */
function withoutGrad<T>(fn: () => T): T {
  const previous = binding.isGradEnabled();
  binding.setGradEnabled(false);
  try {
    return fn();
  } finally {
    binding.setGradEnabled(previous);
  }
}

/** Runs `fn` with gradient recording off (PyTorch's `torch.no_grad()`), restoring it after. */
export function noGrad<T>(fn: () => T): T {
  return withoutGrad(() => {
    const result = fn();
    if (result instanceof Promise) {
      throw new Error('noGrad() cannot span an await: grad mode is per thread; for an async call such as forwardAsync, use noGradAsync');
    }
    return result;
  });
}

/**
 * Starts an async call of the library (`forwardAsync`, `callMethodAsync`, ...) with gradient
 * recording off: a call takes the grad mode of the moment it is queued, which `start` does
 * before its first `await`; the mode is restored as soon as `start` returns.
 */
export function noGradAsync<T>(start: () => Promise<T>): Promise<T> {
  return withoutGrad(start);
}

export { keep, tidy };
export { save, load } from '../io/serialization';
import * as exportedPrograms from './export';
/** Exported programs, as Python's `torch.export`: `torch.export.load('model.pt2')`. */
export { exportedPrograms as export };

/** CUDA devices: chosen at run time, so the same program runs with and without a GPU. */
export const cuda = {
  isAvailable: (): boolean => binding.cudaIsAvailable(),
  deviceCount: (): number => binding.cudaDeviceCount(),
};

/**
 * PyTorch's `torch.backends` switches for CUDA's float32 arithmetic, with its defaults: cuDNN
 * convolutions may round float32 inputs to TF32 (`allowTF32` true, about 1e-3 relative error,
 * several times faster on Ampere and later GPUs), cuBLAS matrix products may not. Set
 * `torch.backends.cudnn.allowTF32 = false` for results within float32 rounding of the CPU's.
 * Process-wide, as in PyTorch; no effect on the CPU.
 */
export const backends = {
  cudnn: {
    get allowTF32(): boolean { return binding.allowTF32CuDNN(); },
    set allowTF32(allow: boolean) { binding.allowTF32CuDNN(checkBoolean(allow, 'torch.backends.cudnn.allowTF32')); },
  },
  cuda: {
    matmul: {
      get allowTF32(): boolean { return binding.allowTF32CuBLAS(); },
      set allowTF32(allow: boolean) { binding.allowTF32CuBLAS(checkBoolean(allow, 'torch.backends.cuda.matmul.allowTF32')); },
    },
  },
};

/**
 * The LibTorch version the addon was built against, the version loaded in this process,
 * whether the build has CUDA, and which addon binary was loaded and why.
 */
export const version = { libtorch: binding.libtorchVersion, loaded: binding.loadedLibtorchVersion, cuda: binding.builtWithCuda, binary };

export type { DType, Device, MemoryStats };
