/**
 * Checkpoints of an early-exit model and its optimizer, so training continues where it
 * stopped. A checkpoint is a folder that Python can read too:
 *   backbone.pt      the TorchScript backbone (torch.jit.load)
 *   exit-<i>.pt      each nn branch's state dict (torch.load, then load_state_dict)
 *   exit-<i>.ts.pt   each TorchScript branch (torch.jit.load)
 *   optimizer.pt     the optimizer's tensors by name (torch.load)
 *   checkpoint.json  exit points, branch architectures, optimizer settings, epoch, extra
 * It is written to a temporary folder first and renamed, so an interrupted save leaves
 * the previous checkpoint whole.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Device } from '../dtype';
import { ScriptModule, load as loadScript } from '../jit';
import { Module, ModuleSpec, fromSpec } from '../nn';
import { Optimizer, OptimizerStateDict } from '../optim';
import { load as loadTensors, save as saveTensors } from '../serialization';
import { Tensor } from '../tensor';
import { EarlyExitModel } from './model';

const FORMAT = 'torch-early-exit checkpoint';
const VERSION = 1;

type BranchRecord = { type: 'nn'; spec: ModuleSpec; file: string } | { type: 'torchscript'; file: string };

interface CheckpointJson {
  format: string;
  version: number;
  exitPoints: string[];
  branches: BranchRecord[];
  optimizer?: { paramGroups: OptimizerStateDict['paramGroups']; scalars: Record<string, number> };
  epoch?: number;
  extra?: unknown;
}

export interface SaveCheckpointOptions {
  optimizer?: Optimizer;
  epoch?: number;
  /** Anything JSON can hold: metrics, the loss weights, the data split. */
  extra?: unknown;
}

/** Saves `model` (and optionally its optimizer) into the folder `dir`, replacing it. */
export function saveCheckpoint(dir: string, model: EarlyExitModel, options: SaveCheckpointOptions = {}): void {
  const staging = `${dir.replace(/\/+$/, '')}.saving-${process.pid}`;
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(staging, { recursive: true });
  model.backbone.save(path.join(staging, 'backbone.pt'));
  const branches: BranchRecord[] = model.branches.map((branch, i) => {
    if (branch instanceof ScriptModule) {
      const file = `exit-${i}.ts.pt`;
      branch.save(path.join(staging, file));
      return { type: 'torchscript', file };
    }
    if (!(branch instanceof Module)) throw new Error(`exit ${i}: only nn modules and ScriptModules can be saved`);
    const file = `exit-${i}.pt`;
    saveTensors(branch.stateDict(), path.join(staging, file));
    return { type: 'nn', spec: branch.spec(), file };
  });
  const json: CheckpointJson = { format: FORMAT, version: VERSION, exitPoints: model.exitPoints, branches, epoch: options.epoch, extra: options.extra };
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
  fs.writeFileSync(path.join(staging, 'checkpoint.json'), JSON.stringify(json, null, 2));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(staging, dir);
}

export interface LoadedCheckpoint {
  model: EarlyExitModel;
  /** Give it to `optimizer.loadStateDict` of an optimizer made over `model.parameters()` as before. */
  optimizerState?: OptimizerStateDict;
  epoch?: number;
  extra?: unknown;
}

/** Loads a checkpoint written by `saveCheckpoint`. */
export function loadCheckpoint(dir: string, options: { device?: Device | string } = {}): LoadedCheckpoint {
  const file = path.join(dir, 'checkpoint.json');
  if (!fs.existsSync(file)) throw new Error(`no checkpoint in '${dir}': checkpoint.json is missing`);
  const json = JSON.parse(fs.readFileSync(file, 'utf8')) as CheckpointJson;
  if (json.format !== FORMAT || json.version !== VERSION) {
    throw new Error(`'${file}' is not a ${FORMAT} of version ${VERSION}`);
  }
  const backbone = loadScript(path.join(dir, 'backbone.pt'), { device: options.device });
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
    const tensors = loadTensors(path.join(dir, 'optimizer.pt')) as Record<string, Tensor>;
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
