/**
 * `torch.save` and `torch.load` for dictionaries of tensors (state dicts), in the file
 * format Python's `torch.load` and `torch.save` use.
 */
import * as fs from 'fs';
import { writeFileAtomic } from './atomic-write';
import { binding } from './binding';
import { checkString } from './check';
import { Tensor, fromNative, toNative } from './tensor';
import { contentError, readArchive } from './zip-integrity';

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

/**
 * Writes `value` to `path` so that Python's `torch.load(path)` reads it. The file is
 * replaced atomically (see `writeFileAtomic`): a failed save leaves the previous file whole.
 * Throws, naming the key path, for values it cannot represent (see `checkSavable`).
 */
export function save(value: Savable, path: string): void {
  checkString(path, 'torch.save: path');
  const bytes = binding.pickleSave(toNative(checkSavable(value)));
  writeFileAtomic(path, bytes, 'torch.save');
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
  const bytes = readArchive(path, what);
  try {
    return fromNative(binding.pickleLoad(bytes));
  } catch (error) {
    const explained = contentError(what, error, 'pickled data');
    throw new Error(`${explained.message}\n` +
      "LibTorch reads files of this library's torch.save, and Python torch.save files of plain dicts of tensors " +
      'and values: from Python, save dict(state_dict) rather than the OrderedDict state_dict() returns.');
  }
}
