/**
 * The contents of a `.pt2` file written by Python's `torch.export.save`: the exported
 * program's JSON and its weights and constants by name. Two layouts exist:
 * - PyTorch 2.6: a zip of `serialized_exported_program.json`, `serialized_state_dict.pt` and
 *   `serialized_constants.pt` (each a torch.save file inside the zip) and `version`;
 * - PyTorch 2.14 (the "PT2 archive"): `NAME/models/model.json`, and every weight as raw bytes
 *   in `NAME/data/weights/` described by `model_weights_config.json` (constants likewise).
 * Both carry the same export schema (major version 8), which lib/torch/export.ts reads.
 */
import { binding } from '../binding';
import { Tensor, callOp } from '../torch/tensor';
import { decodeTorchSave } from './serialization';
import { checkTensorExtent, elementSize } from './tensor-storages';
import { verifyZipArchive } from './zip-integrity';

/** The export schema's ScalarType numbers (torch/_export/serde/schema.py), as dtype names. */
export const EXPORT_DTYPES: Record<number, string> = {
  1: 'uint8', 2: 'int8', 3: 'int16', 4: 'int32', 5: 'int64', 6: 'float16', 7: 'float32', 8: 'float64', 12: 'bool', 13: 'bfloat16',
};

/** What a `.pt2` file holds, whatever its layout. */
export interface Pt2Contents {
  /** The ExportedProgram as JSON (export schema 8). */
  program: any;
  /** Parameters and buffers by their state-dict names. */
  weights: Map<string, Tensor>;
  /** Lifted tensor constants by name. */
  constants: Map<string, Tensor>;
}

/**
 * Python's json module writes float('inf') as Infinity, which JSON has not (a program that
 * masks attention with -inf holds one): outside strings it becomes 1e999, which parses to
 * Infinity. (NaN, which JSON cannot hold either, stays a refusal.)
 */
function withoutPythonInfinity(text: string): string {
  let out = '';
  let start = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === 'I' && text.startsWith('Infinity', i)) {
      out += `${text.slice(start, i)}1e999`;
      start = i + 'Infinity'.length;
      i = start - 1;
    }
  }
  return out + text.slice(start);
}

function parseJson(bytes: Buffer | undefined, entry: string, what: string): any {
  if (!bytes) throw new Error(`${what}: the archive has no ${entry}`);
  const text = bytes.toString('utf8');
  try {
    return JSON.parse(text);
  } catch (error) {
    try {
      return JSON.parse(withoutPythonInfinity(text));
    } catch {
      throw new Error(`${what}: ${entry} is not valid JSON (${(error as Error).message})`);
    }
  }
}

/** The value of a torch.save file stored as an entry of the archive, checked as a file of its own. */
function decodeEntry(bytes: Buffer, inner: string): unknown {
  return decodeTorchSave(verifyZipArchive(bytes, inner), inner);
}

/** A dict of tensors saved with torch.save inside the archive (2.6's state dict and constants). */
function nestedTorchSave(bytes: Buffer | undefined, entry: string, what: string): Map<string, Tensor> {
  if (!bytes) throw new Error(`${what}: the archive has no ${entry}`);
  const inner = `${what}: ${entry}`;
  const value = decodeEntry(bytes, inner);
  const map = new Map<string, Tensor>();
  if (value === null || typeof value !== 'object') throw new Error(`${inner}: holds no dict of tensors`);
  for (const [name, tensor] of Object.entries(value as Record<string, unknown>)) {
    if (!(tensor instanceof Tensor)) throw new Error(`${inner}: '${name}' is not a tensor`);
    map.set(name, tensor);
  }
  return map;
}

function intOf(value: any, where: string, what: string): number {
  if (value && typeof value.as_int === 'number') return value.as_int;
  throw new Error(`${what}: ${where} is not a plain integer`);
}

/** The tensors of a PT2 archive's weights or constants config, each checked against its file. */
function rawTensors(entries: Map<string, Buffer>, folder: string, configName: string, what: string): Map<string, Tensor> {
  const tensors = new Map<string, Tensor>();
  const configEntry = `${folder}${configName}`;
  if (!entries.has(configEntry)) return tensors;
  const config = parseJson(entries.get(configEntry), configEntry, what).config ?? {};
  for (const [name, spec] of Object.entries<any>(config)) {
    const entry = `${folder}${spec.path_name}`;
    const bytes = entries.get(entry);
    if (!bytes) throw new Error(`${what}: tensor '${name}': the archive has no ${entry}`);
    if (spec.use_pickle) {
      const inner = `${what}: tensor '${name}' (${entry})`;
      const value = decodeEntry(bytes, inner);
      if (!(value instanceof Tensor)) throw new Error(`${inner}: does not hold a tensor`);
      tensors.set(name, value);
      continue;
    }
    const meta = spec.tensor_meta;
    const dtype = EXPORT_DTYPES[meta?.dtype];
    if (!dtype) throw new Error(`${what}: tensor '${name}' has the dtype code ${meta?.dtype}, which this library does not read`);
    const fail = (message: string): never => { throw new Error(`${what}: tensor '${name}': ${message}`); };
    const size = (meta.sizes as any[]).map((s, i) => intOf(s, `tensor '${name}' size ${i}`, what));
    const stride = (meta.strides as any[]).map((s, i) => intOf(s, `tensor '${name}' stride ${i}`, what));
    const offset = intOf(meta.storage_offset, `tensor '${name}' storage offset`, what);
    const itemSize = elementSize(dtype, fail);
    if (bytes.length % itemSize !== 0) fail(`${entry} holds ${bytes.length} bytes, not a whole number of ${dtype} elements`);
    checkTensorExtent({ key: spec.path_name, numel: bytes.length / itemSize, entry }, offset, size, stride, fail);
    const storage = new Tensor(binding.fromBytes(bytes, dtype));
    const tensor = callOp('as_strided', '', [storage, size, stride, offset]) as Tensor;
    // Parameters are saved requiring gradients (unless they were frozen), as Python made them.
    if (meta.requires_grad === true) tensor.requiresGrad = true;
    tensors.set(name, tensor);
  }
  return tensors;
}

/** Reads the program, weights and constants of a `.pt2` file's (already verified) entries. */
export function readPt2(entries: Map<string, Buffer>, what: string): Pt2Contents {
  if (entries.has('serialized_exported_program.json')) {
    return {
      program: parseJson(entries.get('serialized_exported_program.json'), 'serialized_exported_program.json', what),
      weights: nestedTorchSave(entries.get('serialized_state_dict.pt'), 'serialized_state_dict.pt', what),
      constants: entries.has('serialized_constants.pt') ? nestedTorchSave(entries.get('serialized_constants.pt'), 'serialized_constants.pt', what) : new Map(),
    };
  }
  const format = [...entries.keys()].find((name) => /^[^/]+\/archive_format$/.test(name));
  if (format && entries.get(format)!.toString('utf8').trim() === 'pt2') {
    const root = format.slice(0, -'archive_format'.length);
    const models = [...entries.keys()].filter((name) => name.startsWith(`${root}models/`) && name.endsWith('.json'));
    if (models.length !== 1) {
      throw new Error(`${what}: the PT2 archive holds ${models.length} models (${models.join(', ') || 'none'}); this library loads archives of one model`);
    }
    const model = models[0].slice(`${root}models/`.length, -'.json'.length);
    return {
      program: parseJson(entries.get(models[0]), models[0], what),
      weights: rawTensors(entries, `${root}data/weights/`, `${model}_weights_config.json`, what),
      constants: rawTensors(entries, `${root}data/constants/`, `${model}_constants_config.json`, what),
    };
  }
  throw new Error(`${what}: this is not a file written by torch.export.save (no serialized_exported_program.json, and no PT2 archive_format)`);
}
