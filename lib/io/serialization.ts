/**
 * `torch.save` and `torch.load` for dictionaries of tensors (state dicts), in the file
 * format Python's `torch.load` and `torch.save` use.
 */
import * as fs from 'fs';
import { writeFileAtomic } from './atomic-write';
import { binding } from '../binding';
import { checkString } from '../util/check';
import { PickleWriter, STORAGE_DTYPES, UnsupportedPickle, unpickle } from './pickle';
import { Tensor, callOp } from '../torch/tensor';
import { checkArchiveStorages } from './tensor-storages';
import { readArchive } from './zip-integrity';
import { zipStored } from './zip-writer';

/**
 * A value `save` can write: tensors, numbers (NaN and ±Infinity included; integral numbers
 * are written as Python ints, others as floats), bigints within the int64 range (written
 * as Python ints), strings, booleans, null, arrays and string-keyed plain objects.
 */
export type Savable = Tensor | number | bigint | string | boolean | null | Savable[] | { [key: string]: Savable };

const WHAT_SAVE_WRITES = 'torch.save writes Tensors, numbers, bigints (int64), strings, booleans, null, arrays and plain objects';
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** `value.key`, or `value["odd key"]` where the key is not an identifier. */
function childPath(parent: string, key: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${parent}.${key}` : `${parent}[${JSON.stringify(key)}]`;
}

/** What an object that is not a plain object, an array or a Tensor is, in words. */
function describeObject(value: object): string {
  if (value instanceof Map) return 'a Map';
  if (value instanceof Set) return 'a Set';
  if (value instanceof Date) return 'a Date';
  if (ArrayBuffer.isView(value)) return `a ${value.constructor?.name ?? 'typed array'} (make it a Tensor with torch.tensor)`;
  const name = (value as { constructor?: { name?: string } }).constructor?.name;
  return name ? `an instance of ${name}` : 'an object of a class';
}

/**
 * `value` checked to be savable, with objects of a null prototype made plain; throws
 * `torch.save: <key path> is <what>; torch.save writes ...` for anything `save` cannot
 * represent faithfully: functions, undefined, symbols, Maps, Sets, Dates, class instances
 * other than Tensor, sparse arrays, cycles, bigints outside the int64 range.
 */
export function checkSavable(value: unknown, where = 'value', ancestors: object[] = []): Savable {
  const refuse = (what: string): never => { throw new Error(`torch.save: ${where} is ${what}; ${WHAT_SAVE_WRITES}`); };
  switch (typeof value) {
    case 'number': case 'string': case 'boolean': return value;
    case 'bigint':
      if (value < INT64_MIN || value > INT64_MAX) refuse(`the bigint ${value}, outside the int64 range`);
      return value;
    case 'undefined': return refuse('undefined');
    case 'function': return refuse('a function');
    case 'symbol': return refuse('a symbol');
  }
  if (value === null || value instanceof Tensor) return value as Tensor | null;
  const object = value as object;
  const seen = ancestors.indexOf(object);
  if (seen >= 0) refuse(`a reference back to an object that contains it (a cycle)`);
  const inside = [...ancestors, object];
  if (Array.isArray(object)) {
    const result: Savable[] = [];
    for (let i = 0; i < object.length; i++) {
      if (!(i in object)) throw new Error(`torch.save: ${where}[${i}] is a hole in a sparse array; ${WHAT_SAVE_WRITES}`);
      result.push(checkSavable(object[i], `${where}[${i}]`, inside));
    }
    return result;
  }
  const prototype = Object.getPrototypeOf(object);
  if (prototype !== Object.prototype && prototype !== null) refuse(describeObject(object));
  const symbols = Object.getOwnPropertySymbols(object);
  if (symbols.length > 0) refuse(`an object with the symbol key ${String(symbols[0])}`);
  const result: { [key: string]: Savable } = {};
  for (const [key, item] of Object.entries(object)) result[key] = checkSavable(item, childPath(where, key), inside);
  return result;
}

/** The storage class torch.save names for each dtype (the inverse of STORAGE_DTYPES). */
const STORAGE_OF: Record<string, string> = Object.fromEntries(
  Object.entries(STORAGE_DTYPES).filter(([name]) => name !== 'UntypedStorage').map(([name, dtype]) => [dtype, name]));

/** Contiguous strides of `shape`, row-major. */
function contiguousStrides(shape: number[]): number[] {
  const strides = new Array<number>(shape.length);
  let step = 1;
  for (let i = shape.length - 1; i >= 0; i--) { strides[i] = step; step *= Math.max(shape[i], 1); }
  return strides;
}

/**
 * The bytes of a torch.save file of `value`, as Python's `torch.save` writes it: a zip of
 * `archive/data.pkl` (protocol 2), `archive/byteorder`, one `archive/data/<key>` per tensor
 * and `archive/version`.
 */
export function encodeTorchSave(value: Savable): Buffer {
  const pickle = new PickleWriter();
  const storages: Array<readonly [string, Buffer]> = [];
  const write = (item: Savable): void => {
    if (item instanceof Tensor) {
      const storage = STORAGE_OF[item.dtype];
      if (!storage) throw new Error(`torch.save: tensors of dtype ${item.dtype} cannot be saved`);
      const key = String(storages.length);
      storages.push([`archive/data/${key}`, item.native.bytes()]);
      const shape = item.shape;
      pickle.reduce(() => pickle.global('torch._utils', '_rebuild_tensor_v2'), () => {
        pickle.persistent(() => {
          pickle.string('storage'); pickle.global('torch', storage); pickle.string(key); pickle.string('cpu');
          pickle.int(shape.reduce((n, size) => n * size, 1));
        });
        pickle.int(0);
        pickle.tuple(() => shape.forEach((size) => pickle.int(size)));
        pickle.tuple(() => contiguousStrides(shape).forEach((stride) => pickle.int(stride)));
        pickle.bool(item.requiresGrad);
        pickle.reduce(() => pickle.global('collections', 'OrderedDict'), () => undefined);
      });
    } else if (item === null) pickle.none();
    else if (typeof item === 'boolean') pickle.bool(item);
    else if (typeof item === 'bigint') pickle.int(item);
    else if (typeof item === 'number') {
      if (Number.isSafeInteger(item)) pickle.int(item); else pickle.float(item);
    } else if (typeof item === 'string') pickle.string(item);
    else if (Array.isArray(item)) pickle.list(item.length, () => item.forEach(write));
    else {
      const entries = Object.entries(item);
      pickle.dict(entries.length, () => entries.forEach(([key, entry]) => { pickle.string(key); write(entry); }));
    }
  };
  write(value);
  return zipStored([['archive/data.pkl', pickle.finish()], ['archive/byteorder', Buffer.from('little')], ...storages,
    ['archive/version', Buffer.from('3\n')]], 'torch.save');
}

/**
 * The value of a torch.save file from its entries; throws UnsupportedPickle for a file
 * that needs more of Python than a dict of tensors and values.
 */
export function decodeTorchSave(entries: Map<string, Buffer>, what: string): unknown {
  const pickleName = [...entries.keys()].find((name) => /^[^/]+\/data\.pkl$/.test(name));
  if (!pickleName) throw new UnsupportedPickle(`${what}: the archive has no <folder>/data.pkl, so it is not a torch.save file`);
  const folder = pickleName.slice(0, -'data.pkl'.length);
  // Every storage is its recorded size and every tensor fits it (and no storage is orphaned)
  // before one is built.
  checkArchiveStorages(entries, what);
  const storages = new Map<string, Tensor>();
  const storage = (key: string, dtype: string): Tensor => {
    let found = storages.get(key);
    if (!found) {
      found = new Tensor(binding.fromBytes(entries.get(`${folder}data/${key}`)!, dtype));
      storages.set(key, found);
    }
    return found;
  };
  const tensor = (data: unknown, offset: number, size: number[], stride: number[], requiresGrad: boolean): Tensor => {
    const base = data as Tensor;
    const result = callOp('as_strided', '', [base, size, stride, offset]) as Tensor;
    if (requiresGrad) result.requiresGrad = true;
    return result;
  };
  return unpickle(entries.get(pickleName)!, storage, tensor);
}

/**
 * Writes `value` to `path` so that Python's `torch.load(path)` reads it. The file is
 * replaced atomically (see `writeFileAtomic`): a failed save leaves the previous file whole.
 * Throws, naming the key path, for values it cannot represent (see `checkSavable`).
 */
export function save(value: Savable, path: string): void {
  checkString(path, 'torch.save: path');
  writeFileAtomic(path, encodeTorchSave(checkSavable(value)), 'torch.save');
}

/**
 * Reads a file written by `save`, or by Python's `torch.save` of a plain dict of tensors
 * and values. LibTorch's unpickler reads less than Python's: from Python, save
 * `dict(module.state_dict())` (a state dict is an OrderedDict with metadata it cannot read).
 */
export function load(path: string): any {
  checkString(path, 'torch.load: path');
  if (!fs.existsSync(path)) throw new Error(`torch.load: no such file '${path}'`);
  const what = `torch.load: cannot read '${path}'`;
  const { entries } = readArchive(path, what);
  // Not LibTorch's unpickler: it loops without end on some damaged pickles (1.13 and 2.6).
  try {
    return decodeTorchSave(entries, what);
  } catch (error) {
    const message = (error as Error).message;
    if (message.startsWith(what)) throw error;
    if (error instanceof UnsupportedPickle) {
      throw new Error(`${what}: ${message}. torch.load reads what Python's torch.load reads with weights_only=True: ` +
        'tensors, numbers, strings, booleans, None, lists, tuples, dicts and OrderedDicts.');
    }
    throw new Error(`${what}: its pickled data is damaged: ${message}`);
  }
}
