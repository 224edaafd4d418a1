/**
 * Checkpoints of an early-exit model and its optimizer, so training continues where it
 * stopped. A checkpoint is a folder that Python can read too:
 *   backbone.pt      the TorchScript backbone (torch.jit.load), or for an exported program:
 *   backbone.pt2     the program as it was loaded (torch.export.load), and
 *   backbone-state.pt  its trained weights, its state dict (torch.load, then load_state_dict)
 *   exit-<i>.pt      each nn branch's state dict (torch.load, then load_state_dict)
 *   exit-<i>.ts.pt   each TorchScript branch (torch.jit.load)
 *   optimizer.pt     the optimizer's tensors by name (torch.load)
 *   checkpoint.json  exit points, branch architectures, optimizer settings, epoch, extra,
 *                    and the size and SHA-256 of each file above
 * The digests make a changed weight visible: a tensor file rewritten with other bytes is
 * still a valid archive (its zip CRCs agree), and only a record kept beside it can tell.
 * It is written to a staging folder beside it first and renamed into place, so an
 * interrupted save leaves the previous checkpoint whole.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { describeFileKind, fsyncFile, fsyncFolder, writeFileAtomic } from '../io/atomic-write';
import { isMissingFile, readRegularFile } from '../io/regular-file';
import { Device } from '../torch/dtype';
import { ScriptModule, load as loadScript } from '../torch/jit';
import { load as loadExported } from '../torch/export';
import { Module, ModuleSpec, fromSpec } from '../torch/nn';
import { Optimizer, OptimizerStateDict } from '../torch/optim';
import { load as loadTensors, save as saveTensors } from '../io/serialization';
import { Tensor } from '../torch/tensor';
import { EarlyExitModel } from './model';

const FORMAT = 'torch-early-exit checkpoint';
const VERSION = 1;
/**
 * checkpoint.json holds names, settings and the caller's `extra`: far less than this. A larger
 * one is refused before it is read, rather than parsed into memory.
 */
const MAX_JSON_BYTES = 64 * 1024 * 1024;

type BranchRecord = { type: 'nn'; spec: ModuleSpec; file: string } | { type: 'torchscript'; file: string };

interface CheckpointJson {
  format: string;
  version: number;
  exitPoints: string[];
  branches: BranchRecord[];
  optimizer?: { paramGroups: OptimizerStateDict['paramGroups']; scalars: Record<string, number> };
  epoch?: number;
  extra?: unknown;
  /** What the backbone is: TorchScript (and absent in older checkpoints) or an exported program. */
  backbone?: BackboneKind;
  /** Each other file's size and SHA-256 (hex), checked before it is read; absent in checkpoints of 0.1. */
  files?: Record<string, FileDigest>;
}

interface FileDigest { bytes: number; sha256: string }

type BackboneKind = 'torchscript' | 'exported';

/** The files besides checkpoint.json that a checkpoint of this backbone, these branches (and optimizer) has. */
function checkpointFiles(backbone: BackboneKind, branches: ReadonlyArray<{ file: string }>, hasOptimizer: boolean): string[] {
  return [...(backbone === 'exported' ? ['backbone.pt2', 'backbone-state.pt'] : ['backbone.pt']), ...branches.map((branch) => branch.file),
    ...(hasOptimizer ? ['optimizer.pt'] : [])];
}

/** The size and SHA-256 of the file at `file`, read once as a regular file. */
function digestFile(file: string): FileDigest {
  const bytes = readRegularFile(file);
  return { bytes: bytes.length, sha256: crypto.createHash('sha256').update(bytes).digest('hex') };
}

/** What `saveCheckpoint` saves besides the model. */
export interface SaveCheckpointOptions {
  /** Its state (momentum buffers, step counts) and parameter groups go to optimizer.pt and checkpoint.json. */
  optimizer?: Optimizer;
  /** The epoch to resume from, as the caller counts. */
  epoch?: number;
  /** Anything JSON can hold: metrics, the loss weights, the data split. */
  extra?: unknown;
}

/** The names of the files a checkpoint folder holds. */
const CHECKPOINT_FILE = /^(?:backbone\.pt|backbone\.pt2|backbone-state\.pt|optimizer\.pt|checkpoint\.json|exit-\d+\.pt|exit-\d+\.ts\.pt)$/;

/** `true` when `name` is one of the files `saveCheckpoint` writes. */
function isCheckpointFile(name: string): boolean {
  return CHECKPOINT_FILE.test(name);
}

/** A random suffix for staging and old folders. */
function uniqueSuffix(): string {
  return `${process.pid}-${crypto.randomBytes(6).toString('hex')}`;
}

/**
 * Checks that `target`, when it exists, is a checkpoint folder that `saveCheckpoint` may
 * replace: a folder (not a link) holding only checkpoint files, with a checkpoint.json of
 * this library's format, or an empty folder. Returns whether it exists.
 */
function checkReplaceable(target: string, dir: string): boolean {
  const refuse = (reason: string): never => {
    throw new Error(`saveCheckpoint: refusing to replace '${dir}': ${reason}`);
  };
  let stats: fs.Stats;
  try {
    stats = fs.lstatSync(target);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    return refuse((error as Error).message);
  }
  if (stats.isSymbolicLink()) refuse('it is a symbolic link; give the folder it points to');
  if (!stats.isDirectory()) refuse(`it is ${describeFileKind(stats)}, not a checkpoint folder`);
  const entries = fs.readdirSync(target, { withFileTypes: true });
  if (entries.length === 0) return true;
  for (const entry of entries) {
    if (!isCheckpointFile(entry.name)) refuse(`it holds '${entry.name}', which is not a checkpoint file, so it is not a checkpoint folder`);
    if (!entry.isFile()) refuse(`its entry '${entry.name}' is not a regular file`);
  }
  const json = path.join(target, 'checkpoint.json');
  let format: unknown;
  try {
    format = (JSON.parse(readRegularFile(json, MAX_JSON_BYTES).toString('utf8')) as { format?: unknown } | null)?.format;
  } catch (error) {
    refuse(isMissingFile(error) ? 'it has no checkpoint.json, so it is not a checkpoint folder' : `cannot read '${json}': ${(error as Error).message}`);
  }
  if (format !== FORMAT) refuse(`'${json}' is not a ${FORMAT} (its format is ${JSON.stringify(format)})`);
  return true;
}

/** Writes every file of the checkpoint into the folder `staging`, each flushed to the disk. */
function writeCheckpointFiles(staging: string, model: EarlyExitModel, options: SaveCheckpointOptions): void {
  const kind: BackboneKind = model.backbone.isExportedProgram ? 'exported' : 'torchscript';
  if (kind === 'exported') {
    // The program as loaded (its graph and modules), and the weights as trained.
    const program = path.join(staging, 'backbone.pt2');
    fs.writeFileSync(program, readRegularFile(model.backbone.model.path));
    fsyncFile(program);
    saveTensors(model.backbone.stateDict(), path.join(staging, 'backbone-state.pt'));
  } else {
    const backbone = path.join(staging, 'backbone.pt');
    model.backbone.save(backbone);
    fsyncFile(backbone);
  }
  const branches: BranchRecord[] = model.branches.map((branch, i) => {
    if (branch instanceof ScriptModule) {
      const file = `exit-${i}.ts.pt`;
      branch.save(path.join(staging, file));
      fsyncFile(path.join(staging, file));
      return { type: 'torchscript', file };
    }
    if (!(branch instanceof Module)) throw new Error(`exit ${i}: only nn modules and ScriptModules can be saved`);
    const file = `exit-${i}.pt`;
    saveTensors(branch.stateDict(), path.join(staging, file));
    return { type: 'nn', spec: branch.spec(), file };
  });
  const json: CheckpointJson = { format: FORMAT, version: VERSION, exitPoints: model.exitPoints, branches, epoch: options.epoch, extra: options.extra };
  if (kind === 'exported') json.backbone = kind;
  if (options.optimizer) {
    const { state, paramGroups } = options.optimizer.stateDict();
    const tensors: Record<string, Tensor> = {};
    const scalars: Record<string, number> = {};
    for (const [index, entry] of Object.entries(state)) {
      for (const [name, value] of Object.entries(entry)) {
        if (value instanceof Tensor) tensors[`${index}.${name}`] = value;
        else scalars[`${index}.${name}`] = value;
      }
    }
    saveTensors(tensors, path.join(staging, 'optimizer.pt'));
    json.optimizer = { paramGroups, scalars };
  }
  // Digests of what is on the disk now, read back after each file was flushed.
  json.files = Object.fromEntries(checkpointFiles(kind, branches, json.optimizer !== undefined).map((name) => [name, digestFile(path.join(staging, name))]));
  writeFileAtomic(path.join(staging, 'checkpoint.json'), JSON.stringify(json, null, 2), 'saveCheckpoint');
  fsyncFolder(staging);
}

/** Deletes the checkpoint files of the folder `old` and the folder; leaves anything else (and then the folder) alone. */
function removeOldCheckpoint(old: string): void {
  for (const name of fs.readdirSync(old)) {
    if (isCheckpointFile(name)) fs.unlinkSync(path.join(old, name));
  }
  fs.rmdirSync(old);
}

/**
 * Saves `model` (and optionally its optimizer) into the folder `dir`, replacing the
 * checkpoint there. It never deletes what it did not write: it refuses a `dir` that exists
 * and is not a checkpoint folder (an entry other than a checkpoint's files, or no
 * checkpoint.json of this library), and `/`. The files are written and flushed in a
 * staging folder beside `dir`, the old checkpoint is renamed away, the staging folder
 * renamed into place, and only then the old checkpoint's files are deleted. On failure
 * the staging folder is removed, the previous checkpoint is left whole, and the Error
 * names `dir`.
 */
export function saveCheckpoint(dir: string, model: EarlyExitModel, options: SaveCheckpointOptions = {}): void {
  const target = path.resolve(dir);
  const parent = path.dirname(target);
  const name = path.basename(target);
  if (target === parent || name === '') throw new Error(`saveCheckpoint: refusing to replace '${dir}': it is the root of the file system`);
  const exists = checkReplaceable(target, dir);
  fs.mkdirSync(parent, { recursive: true });
  const staging = path.join(parent, `.${name}.saving-${uniqueSuffix()}`);
  fs.mkdirSync(staging);
  const old = path.join(parent, `.${name}.old-${uniqueSuffix()}`);
  let movedAway = false;
  try {
    writeCheckpointFiles(staging, model, options);
    if (exists) {
      fs.renameSync(target, old);
      movedAway = true;
    }
    fs.renameSync(staging, target);
  } catch (error) {
    if (movedAway && !fs.existsSync(target)) try { fs.renameSync(old, target); } catch { /* reported below */ }
    fs.rmSync(staging, { recursive: true, force: true });
    const kept = movedAway && fs.existsSync(old) ? ` (the previous checkpoint is kept in '${old}')` : '';
    throw new Error(`saveCheckpoint: cannot save the checkpoint '${dir}': ${(error as Error).message}${kept}`, { cause: error });
  }
  fsyncFolder(parent);
  if (movedAway) {
    try {
      removeOldCheckpoint(old);
    } catch (error) {
      process.emitWarning(`saveCheckpoint: saved '${dir}', but could not remove the previous checkpoint '${old}': ${(error as Error).message}`);
    }
  }
}

/** What `loadCheckpoint` returns: the model and what was saved with it. */
export interface LoadedCheckpoint {
  model: EarlyExitModel;
  /** Give it to `optimizer.loadStateDict` of an optimizer made over `model.parameters()` as before. */
  optimizerState?: OptimizerStateDict;
  epoch?: number;
  extra?: unknown;
}

/** `true` for a non-null object that is not an array. */
function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * `value`, the parsed checkpoint.json at `file`, checked field by field: format and version,
 * exitPoints (strings), branches (one per exit point, `{ type: 'nn', spec, file: 'exit-<i>.pt' }`
 * or `{ type: 'torchscript', file: 'exit-<i>.ts.pt' }`), the optimizer section and the epoch.
 * Throws an Error naming `file` and the bad field.
 */
function validateCheckpointJson(value: unknown, file: string): CheckpointJson {
  const invalid = (field: string, problem: string): never => {
    throw new Error(`loadCheckpoint: '${file}' is invalid: ${field} ${problem}`);
  };
  const shown = (item: unknown): string => (item === undefined ? 'missing' : JSON.stringify(item));
  if (!isRecord(value)) return invalid('the top level', `is ${shown(value)}, not an object`);
  if (value.format !== FORMAT) invalid('format', `is ${shown(value.format)}, not ${JSON.stringify(FORMAT)}`);
  if (value.version !== VERSION) invalid('version', `is ${shown(value.version)}; this library reads version ${VERSION}`);
  const { exitPoints, branches, optimizer, epoch } = value;
  if (value.backbone !== undefined && value.backbone !== 'torchscript' && value.backbone !== 'exported') {
    invalid('backbone', `is ${shown(value.backbone)}, not "torchscript" or "exported"`);
  }
  const kind = (value.backbone ?? 'torchscript') as BackboneKind;
  if (!Array.isArray(exitPoints)) return invalid('exitPoints', `is ${shown(exitPoints)}, not an array of module names`);
  exitPoints.forEach((point, i) => { if (typeof point !== 'string') invalid(`exitPoints[${i}]`, `is ${shown(point)}, not a string`); });
  if (!Array.isArray(branches)) return invalid('branches', `is ${shown(branches)}, not an array`);
  if (branches.length !== exitPoints.length) invalid('branches', `has ${branches.length} entries for ${exitPoints.length} exit points`);
  branches.forEach((branch, i) => {
    if (!isRecord(branch)) return invalid(`branches[${i}]`, `is ${shown(branch)}, not an object`);
    let expected: string;
    if (branch.type === 'nn') {
      if (!isRecord(branch.spec)) invalid(`branches[${i}].spec`, `is ${shown(branch.spec)}, not a module spec object`);
      expected = `exit-${i}.pt`;
    } else if (branch.type === 'torchscript') {
      expected = `exit-${i}.ts.pt`;
    } else {
      return invalid(`branches[${i}].type`, `is ${shown(branch.type)}, not "nn" or "torchscript"`);
    }
    if (branch.file !== expected) invalid(`branches[${i}].file`, `is ${shown(branch.file)}, but must be ${JSON.stringify(expected)}`);
  });
  if (optimizer !== undefined) {
    if (!isRecord(optimizer)) return invalid('optimizer', `is ${shown(optimizer)}, not an object`);
    const { paramGroups, scalars } = optimizer;
    if (!Array.isArray(paramGroups)) return invalid('optimizer.paramGroups', `is ${shown(paramGroups)}, not an array`);
    paramGroups.forEach((group, g) => {
      if (!isRecord(group)) return invalid(`optimizer.paramGroups[${g}]`, `is ${shown(group)}, not an object`);
      if (!Array.isArray(group.params) || !group.params.every((index) => Number.isInteger(index) && index >= 0)) {
        invalid(`optimizer.paramGroups[${g}].params`, `is ${shown(group.params)}, not an array of parameter indices`);
      }
    });
    if (!isRecord(scalars)) return invalid('optimizer.scalars', `is ${shown(scalars)}, not an object`);
    for (const [key, scalar] of Object.entries(scalars)) {
      if (!/^\d+\.[^.]/.test(key)) invalid(`optimizer.scalars[${JSON.stringify(key)}]`, 'has a key that is not "<parameter index>.<name>"');
      if (typeof scalar !== 'number') invalid(`optimizer.scalars[${JSON.stringify(key)}]`, `is ${shown(scalar)}, not a number`);
    }
  }
  if (epoch !== undefined && !Number.isFinite(epoch)) invalid('epoch', `is ${shown(epoch)}, not a number`);
  if (value.files !== undefined) {
    const { files } = value;
    if (!isRecord(files)) return invalid('files', `is ${shown(files)}, not an object`);
    const expected = checkpointFiles(kind, branches as Array<{ file: string }>, optimizer !== undefined);
    const listed = Object.keys(files);
    if (listed.sort().join() !== [...expected].sort().join()) invalid('files', `lists ${shown(listed)}, not the checkpoint's files ${shown(expected)}`);
    for (const [name, digest] of Object.entries(files)) {
      if (!isRecord(digest) || !Number.isSafeInteger(digest.bytes) || (digest.bytes as number) < 0 ||
        typeof digest.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(digest.sha256)) {
        invalid(`files[${JSON.stringify(name)}]`, `is ${shown(digest)}, not { bytes, sha256 } (a size and 64 hex digits)`);
      }
    }
  }
  return value as unknown as CheckpointJson;
}

/** Loads a checkpoint written by `saveCheckpoint`; a damaged or hand-edited checkpoint.json is refused, naming the field. */
export function loadCheckpoint(dir: string, options: { device?: Device | string } = {}): LoadedCheckpoint {
  const file = path.join(dir, 'checkpoint.json');
  let parsed: unknown;
  try {
    parsed = JSON.parse(readRegularFile(file, MAX_JSON_BYTES).toString('utf8'));
  } catch (error) {
    if (isMissingFile(error)) throw new Error(`no checkpoint in '${dir}': checkpoint.json is missing`);
    throw new Error(`loadCheckpoint: cannot read '${file}': ${(error as Error).message}`, { cause: error });
  }
  const json = validateCheckpointJson(parsed, file);
  // Every file is checked against its digest before any is parsed.
  for (const [name, recorded] of Object.entries(json.files ?? {})) {
    const target = path.join(dir, name);
    let actual: FileDigest;
    try {
      actual = digestFile(target);
    } catch (error) {
      throw new Error(`loadCheckpoint: cannot read '${target}': ${(error as Error).message}`, { cause: error });
    }
    if (actual.bytes !== recorded.bytes || actual.sha256 !== recorded.sha256) {
      throw new Error(`loadCheckpoint: '${target}' is damaged or was changed after saveCheckpoint wrote it: it has ${actual.bytes} bytes ` +
        `with SHA-256 ${actual.sha256}; checkpoint.json records ${recorded.bytes} bytes with SHA-256 ${recorded.sha256}`);
    }
  }
  let backbone: ScriptModule;
  if (json.backbone === 'exported') {
    backbone = loadExported(path.join(dir, 'backbone.pt2'), { device: options.device });
    backbone.loadStateDict(loadTensors(path.join(dir, 'backbone-state.pt')) as Record<string, Tensor>);
  } else {
    backbone = loadScript(path.join(dir, 'backbone.pt'), { device: options.device });
  }
  const branches = json.branches.map((record) => {
    if (record.type === 'torchscript') return loadScript(path.join(dir, record.file), { device: options.device });
    const branch = fromSpec(record.spec);
    branch.loadStateDict(loadTensors(path.join(dir, record.file)));
    if (options.device) branch.to(options.device);
    return branch;
  });
  const model = new EarlyExitModel(backbone, json.exitPoints.map((point, i) => [point, branches[i]] as const));
  let optimizerState: OptimizerStateDict | undefined;
  if (json.optimizer) {
    const optimizerFile = path.join(dir, 'optimizer.pt');
    const tensors = loadTensors(optimizerFile) as Record<string, Tensor>;
    if (!isRecord(tensors)) throw new Error(`loadCheckpoint: '${optimizerFile}' is invalid: it holds no dict of tensors`);
    for (const [key, value] of Object.entries(tensors)) {
      if (!/^\d+\.[^.]/.test(key) || !(value instanceof Tensor)) {
        throw new Error(`loadCheckpoint: '${optimizerFile}' is invalid: entry ${JSON.stringify(key)} is not a tensor named "<parameter index>.<name>"`);
      }
    }
    const state: OptimizerStateDict['state'] = {};
    const put = (key: string, value: Tensor | number) => {
      const dot = key.indexOf('.');
      const index = Number(key.slice(0, dot));
      (state[index] ??= {})[key.slice(dot + 1)] = value;
    };
    for (const [key, value] of Object.entries(tensors)) put(key, value);
    for (const [key, value] of Object.entries(json.optimizer.scalars)) put(key, value);
    optimizerState = { state, paramGroups: json.optimizer.paramGroups };
  }
  return { model, optimizerState, epoch: json.epoch, extra: json.extra };
}
