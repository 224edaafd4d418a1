/**
 * Checks that every tensor of an archive fits its storage, before LibTorch reads it.
 *
 * A TorchScript file (`torch.jit.save`) or a `torch.save` file is a zip of pickles
 * (`data.pkl`, `constants.pkl`) and one entry per storage (`data/0`, `constants/0`, ...).
 * Each tensor in a pickle names its storage with the storage's element count, and places
 * itself in it with an offset, sizes and strides. LibTorch trusts all of it: a storage entry
 * shorter than its tensors need is read past its end (NaN, garbage, or a SIGSEGV), one longer
 * shifts nothing it notices. The zip's CRCs cannot see this when the archive was rewritten
 * with damaged content. So each pickle is walked here, without running anything, and:
 *
 *   - each storage entry exists and holds exactly its element count times its element size;
 *   - each tensor's offset, sizes and strides are whole, non-negative and end inside its storage;
 *   - a storage named twice is named with the same dtype and count;
 *   - every storage entry of the archive is named by its pickle (an orphan means a damaged name).
 *
 * A mismatch throws an Error that names the file (`what`), the tensor (`layer1.0.conv1.weight`)
 * and the entry.
 */
import { OpaqueObject, unpickle } from './pickle';

/** Bytes per element, by the dtype names of `STORAGE_DTYPES` and the storage classes torch.save writes. */
const ELEMENT_SIZES: Record<string, number> = {
  float32: 4, float64: 8, float16: 2, bfloat16: 2, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1,
  'torch.ComplexFloatStorage': 8, 'torch.ComplexDoubleStorage': 16, 'torch.ComplexHalfStorage': 4,
  'torch.QInt8Storage': 1, 'torch.QUInt8Storage': 1, 'torch.QInt32Storage': 4, 'torch.QUInt4x2Storage': 1, 'torch.QUInt2x4Storage': 1,
  'torch.UInt16Storage': 2, 'torch.UInt32Storage': 4, 'torch.UInt64Storage': 8,
  'torch.Float8_e4m3fnStorage': 1, 'torch.Float8_e5m2Storage': 1, 'torch.Float8_e4m3fnuzStorage': 1, 'torch.Float8_e5m2fnuzStorage': 1,
  'torch.Float8_e8m0fnuStorage': 1, 'torch.Float4_e2m1fn_x2Storage': 1, 'torch.BitsStorage': 1,
};

/** The bytes per element of a storage dtype as `unpickle` names it; throws for one it does not know. */
export function elementSize(dtype: string, fail: (message: string) => never): number {
  const size = ELEMENT_SIZES[dtype];
  if (size === undefined) fail(`a storage has the dtype ${dtype}, whose element size this reader does not know, so its tensors cannot be checked`);
  return size;
}

/** What the storage named by a key of one pickle is. */
interface StorageRecord { key: string; dtype: string; numel: number; entry: string; problem?: string }

/**
 * A tensor's placement checked against its storage: whole non-negative sizes, strides and
 * offset, and its last element inside the storage (an empty tensor needs no element).
 */
export function checkTensorExtent(storage: { key: string; numel: number; entry: string }, offset: number, size: number[], stride: number[],
  fail: (message: string) => never): void {
  const describe = () => `its shape [${size}], strides [${stride}] and offset ${offset} over ${storage.entry}`;
  const whole = (n: unknown) => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
  if (!whole(offset) || !size.every(whole) || !stride.every(whole) || size.length !== stride.length) {
    fail(`${describe()} are not whole non-negative numbers, one size and stride per dimension`);
  }
  if (size.some((n) => n === 0)) {
    if (offset > storage.numel) fail(`${describe()} start past the end of its storage of ${storage.numel} elements`);
    return;
  }
  const last = size.reduce((end, n, i) => end + (n - 1) * stride[i], offset);
  if (!Number.isSafeInteger(last) || last >= storage.numel) {
    fail(`${describe()} reach element ${last}, past the end of its storage of ${storage.numel} elements`);
  }
}

/** A tensor as the walk sees it: its storage, and what is wrong with it or its storage. */
class TensorMark {
  constructor(readonly storage: StorageRecord, readonly problem: string | undefined) {}
}

/**
 * Where each tensor of `root` sits: `layer1.0.conv1.weight` through objects' states and dict
 * keys, list indices; `(constants)[3]` and the like where a pickle holds a bare tuple.
 */
function tensorNames(root: unknown): Map<TensorMark, string> {
  const names = new Map<TensorMark, string>();
  const seen = new Set<unknown>();
  const walk = (node: unknown, name: string) => {
    if (node instanceof TensorMark) { if (!names.has(node)) names.set(node, name || '(the pickle itself)'); return; }
    if (!node || typeof node !== 'object' || seen.has(node)) return;
    seen.add(node);
    const join = (key: string | number) => (typeof key === 'number' ? `${name}[${key}]` : name ? `${name}.${key}` : key);
    if (Array.isArray(node)) node.forEach((item, i) => walk(item, join(i)));
    else if ('global' in node && 'args' in node) {
      const opaque = node as OpaqueObject;
      opaque.args.forEach((arg) => walk(arg, name));
      walk(opaque.state, name);
    } else for (const [key, value] of Object.entries(node)) walk(value, join(key));
  };
  walk(root, '');
  return names;
}

/**
 * Walks the pickle `pickleName` of `entries` and checks each tensor in it against its storage
 * in `<folder>/<storageFolder>/<key>`; returns the storage entries it named. Throws Errors that
 * start with `${what}: ` and name the tensor (`tensor 'fc.weight' (its storage ...)`).
 */
export function checkPickleStorages(entries: Map<string, Buffer>, pickleName: string, storageFolder: string, what: string): Set<string> {
  const fail = (message: string): never => { throw new Error(`${what}: ${message}`); };
  const folder = pickleName.slice(0, pickleName.lastIndexOf('/') + 1);
  const storages = new Map<string, StorageRecord>();
  // A wrong storage or placement is kept with its tensor and reported once the pickle is read,
  // so that the message can say which tensor it is.
  const storage = (key: string, dtype: string, numel: number): StorageRecord => {
    const entry = `${folder}${storageFolder}/${key}`;
    const seen = storages.get(key);
    if (seen) {
      if (seen.dtype !== dtype || seen.numel !== numel) {
        fail(`${pickleName} names the storage ${entry} twice, as ${seen.numel} ${seen.dtype} and as ${numel} ${dtype}`);
      }
      return seen;
    }
    const record: StorageRecord = { key, dtype, numel, entry };
    storages.set(key, record);
    const bytes = entries.get(entry);
    if (!Number.isSafeInteger(numel) || numel < 0) record.problem = `${pickleName} gives its storage ${entry} ${numel} elements`;
    else if (!bytes) record.problem = `${pickleName} names the storage ${entry}, which the archive does not have`;
    else {
      const expected = numel * elementSize(dtype, fail);
      if (bytes.length !== expected) {
        record.problem = `the storage ${entry} has ${bytes.length} bytes; ${pickleName} records ${numel} ${dtype} elements, which take ${expected}`;
      }
    }
    return record;
  };
  const tensor = (data: unknown, offset: number, size: number[], stride: number[]): unknown => {
    const record = data as StorageRecord;
    if (!record || typeof record.numel !== 'number' || storages.get(record.key) !== record) fail(`${pickleName} is damaged: it builds a tensor over something that is not a storage`);
    let problem = record.problem;
    if (problem === undefined) {
      try {
        checkTensorExtent(record, offset, size, stride, (message) => { throw new Error(message); });
      } catch (error) {
        problem = (error as Error).message;
      }
    }
    return new TensorMark(record, problem);
  };
  let root: unknown;
  try {
    root = unpickle(entries.get(pickleName)!, storage, tensor, { anyGlobal: true });
  } catch (error) {
    const message = (error as Error).message;
    if (message.startsWith(`${what}: `)) throw error;
    fail(`${pickleName} is damaged: ${message}`);
  }
  for (const [mark, name] of tensorNames(root)) {
    if (mark.problem !== undefined) fail(`tensor '${name}': ${mark.problem}`);
  }
  const orphan = [...storages.values()].find((record) => record.problem !== undefined);
  if (orphan) fail(orphan.problem!);
  return new Set([...storages.values()].map((record) => record.entry));
}

/**
 * Checks every tensor of a TorchScript or torch.save archive (its `data.pkl` over `data/`,
 * and a TorchScript file's `constants.pkl` over `constants/`), and that no storage entry is
 * left that no pickle names.
 */
export function checkArchiveStorages(entries: Map<string, Buffer>, what: string): void {
  const named = new Set<string>();
  const pickles = [...entries.keys()].filter((name) => /^[^/]+\/(data|constants)\.pkl$/.test(name));
  for (const name of pickles) {
    const storageFolder = name.endsWith('/data.pkl') ? 'data' : 'constants';
    for (const entry of checkPickleStorages(entries, name, storageFolder, what)) named.add(entry);
  }
  const folders = new Set(pickles.map((name) => name.replace(/\.pkl$/, '/')));
  for (const entry of entries.keys()) {
    const folder = entry.slice(0, entry.lastIndexOf('/') + 1);
    if (folders.has(folder) && !named.has(entry)) {
      throw new Error(`${what}: the archive holds the storage ${entry}, which its pickle never names (a damaged name in the pickle?)`);
    }
  }
}
