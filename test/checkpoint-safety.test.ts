import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, jit, loadCheckpoint, nn, optim, saveCheckpoint, torch } from '../lib';
import { fixture, maxAbsDiff, python, seedBranch } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-ckpt-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let counter = 0;
/** A fresh empty parent folder for one test. */
function parentFolder(): string {
  const folder = path.join(tmp, `case-${counter++}`);
  fs.mkdirSync(folder);
  return folder;
}

/** resnet20 with the seed branch, and optionally a second small branch. */
function makeModel(twoExits = false): EarlyExitModel {
  const exits: Array<[string, nn.Module]> = [['layer1.2.relu2', seedBranch()]];
  if (twoExits) exits.push(['layer2.2.relu2', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))]);
  return new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), exits);
}

/** Every file under `folder` with its bytes, to compare before and after. */
function snapshot(folder: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const name of fs.readdirSync(folder)) result[name] = fs.readFileSync(path.join(folder, name)).toString('base64');
  return result;
}

/** Saves a checkpoint of a one-exit model and returns its folder and checkpoint.json path. */
function savedCheckpoint(): { dir: string; json: string } {
  const dir = path.join(parentFolder(), 'ckpt');
  const model = makeModel();
  saveCheckpoint(dir, model, { optimizer: new optim.SGD(model.parameters(), { lr: 0.1, momentum: 0.9 }), epoch: 2 });
  return { dir, json: path.join(dir, 'checkpoint.json') };
}

describe('saveCheckpoint deletes only what it wrote', () => {
  it('refuses a folder holding an unrelated file, which survives', () => {
    const parent = parentFolder();
    const dir = path.join(parent, 'results');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'my notes');
    expect(() => saveCheckpoint(dir, makeModel())).toThrow(
      `saveCheckpoint: refusing to replace '${dir}': it holds 'notes.txt', which is not a checkpoint file`);
    expect(fs.readFileSync(path.join(dir, 'notes.txt'), 'utf8')).toBe('my notes');
    expect(fs.readdirSync(parent)).toEqual(['results']);
  });

  it('refuses a folder of checkpoint-named files without our checkpoint.json', () => {
    const dir = path.join(parentFolder(), 'other');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'backbone.pt'), 'not ours');
    expect(() => saveCheckpoint(dir, makeModel())).toThrow(`saveCheckpoint: refusing to replace '${dir}': it has no checkpoint.json`);
    fs.writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify({ format: 'something else' }));
    expect(() => saveCheckpoint(dir, makeModel())).toThrow(/is not a torch-early-exit checkpoint \(its format is "something else"\)/);
    expect(fs.readFileSync(path.join(dir, 'backbone.pt'), 'utf8')).toBe('not ours');
  });

  it("refuses '/', a file and a symbolic link", () => {
    const before = fs.readdirSync('/').sort();
    expect(() => saveCheckpoint('/', makeModel())).toThrow("saveCheckpoint: refusing to replace '/': it is the root of the file system");
    expect(fs.readdirSync('/').sort()).toEqual(before);
    const parent = parentFolder();
    const file = path.join(parent, 'file');
    fs.writeFileSync(file, 'data');
    expect(() => saveCheckpoint(file, makeModel())).toThrow(`saveCheckpoint: refusing to replace '${file}': it is a regular file, not a checkpoint folder`);
    fs.symlinkSync(tmp, path.join(parent, 'link'));
    expect(() => saveCheckpoint(path.join(parent, 'link'), makeModel())).toThrow(/it is a symbolic link/);
    expect(fs.readFileSync(file, 'utf8')).toBe('data');
  });

  it('saves into an empty folder, and a re-save replaces the checkpoint leaving no staging or old folders', () => {
    const parent = parentFolder();
    const dir = path.join(parent, 'ckpt');
    fs.mkdirSync(dir);
    const first = makeModel(true);
    saveCheckpoint(dir, first, { epoch: 1 });
    expect(fs.readdirSync(dir).sort()).toEqual(['backbone.pt', 'checkpoint.json', 'exit-0.pt', 'exit-1.pt']);

    const second = makeModel();
    torch.noGrad(() => (second.branches[0] as nn.Module).parameters()[0].mul_(2));
    saveCheckpoint(dir, second, { epoch: 2 });
    expect(fs.readdirSync(parent)).toEqual(['ckpt']);
    expect(fs.readdirSync(dir).sort()).toEqual(['backbone.pt', 'checkpoint.json', 'exit-0.pt']);
    const loaded = loadCheckpoint(dir);
    expect(loaded.epoch).toBe(2);
    expect(loaded.model.exitPoints).toEqual(['layer1.2.relu2']);
    const expected = (second.branches[0] as nn.Module).stateDict();
    const got = (loaded.model.branches[0] as nn.Module).stateDict();
    for (const name of Object.keys(expected)) expect(maxAbsDiff(got[name], expected[name])).toBe(0);
  });

  it('replaces a TorchScript branch file by an nn one, and Python reads the TorchScript branch', () => {
    const scripted = path.join(tmp, 'branch.ts.pt');
    python(`import torch
torch.manual_seed(0)
torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))), ${JSON.stringify(scripted)})`);
    const parent = parentFolder();
    const dir = path.join(parent, 'ckpt');
    const withScript = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', jit.load(scripted)]]);
    saveCheckpoint(dir, withScript);
    expect(fs.readdirSync(dir).sort()).toEqual(['backbone.pt', 'checkpoint.json', 'exit-0.ts.pt']);
    const same = python(`import torch
a = torch.jit.load(${JSON.stringify(scripted)}); b = torch.jit.load(${JSON.stringify(path.join(dir, 'exit-0.ts.pt'))})
print(all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters())))`).trim();
    expect(same).toBe('True');
    saveCheckpoint(dir, makeModel());
    expect(fs.readdirSync(dir).sort()).toEqual(['backbone.pt', 'checkpoint.json', 'exit-0.pt']);
    expect(fs.readdirSync(parent)).toEqual(['ckpt']);
  });

  it('a save that fails leaves the previous checkpoint whole, removes its staging folder and names the folder', () => {
    const { dir } = savedCheckpoint();
    const parent = path.dirname(dir);
    const before = snapshot(dir);
    expect(() => saveCheckpoint(dir, makeModel(true), { extra: { count: 1n } })).toThrow(
      new RegExp(`^saveCheckpoint: cannot save the checkpoint '${dir}': .*BigInt`));
    expect(snapshot(dir)).toEqual(before);
    expect(fs.readdirSync(parent)).toEqual(['ckpt']);
    expect(loadCheckpoint(dir).epoch).toBe(2);
  });
});

describe('loadCheckpoint validates checkpoint.json', () => {
  /** Rewrites checkpoint.json of a fresh checkpoint through `edit`, and returns the error loadCheckpoint throws. */
  function loadEdited(edit: (json: any) => void): { message: string; json: string } {
    const { dir, json } = savedCheckpoint();
    const content = JSON.parse(fs.readFileSync(json, 'utf8'));
    edit(content);
    fs.writeFileSync(json, JSON.stringify(content));
    try {
      loadCheckpoint(dir);
    } catch (error) {
      return { message: (error as Error).message, json };
    }
    throw new Error('loadCheckpoint accepted the edited checkpoint.json');
  }

  it('refuses a branch file that leaves the folder, naming it', () => {
    const { message, json } = loadEdited((content) => { content.branches[0].file = '../../../../etc/passwd'; });
    expect(message).toBe(`loadCheckpoint: '${json}' is invalid: branches[0].file is "../../../../etc/passwd", but must be "exit-0.pt"`);
  });

  it('names the path of a truncated checkpoint.json', () => {
    const { dir, json } = savedCheckpoint();
    const text = fs.readFileSync(json, 'utf8');
    fs.writeFileSync(json, text.slice(0, Math.floor(text.length / 2)));
    expect(() => loadCheckpoint(dir)).toThrow(new RegExp(`^loadCheckpoint: cannot read '${json}': .*JSON`));
  });

  // Each replaces checkpoint.json; the load must end at once with an error naming what is
  // there (before, a named pipe hung the process and a link to /dev/zero read it until memory
  // ran out; a loop of links was reported as a missing file).
  const notFiles: Array<[string, (json: string) => void, string]> = [
    ['a named pipe with no writer', (json) => { execFileSync('mkfifo', [json]); }, 'it is a named pipe (FIFO), not a regular file'],
    ['a link to /dev/zero', (json) => { fs.symlinkSync('/dev/zero', json); }, 'it is a character device, not a regular file'],
    ['a loop of symbolic links', (json) => { fs.symlinkSync(`${json}.b`, json); fs.symlinkSync(json, `${json}.b`); }, 'it is a loop of symbolic links'],
    ['a directory', (json) => { fs.mkdirSync(json); }, 'it is a directory'],
  ];
  it.each(notFiles)('refuses %s in place of checkpoint.json, saying what it is', (_, make, problem) => {
    const { dir, json } = savedCheckpoint();
    fs.rmSync(json);
    make(json);
    expect(() => loadCheckpoint(dir)).toThrow(`loadCheckpoint: cannot read '${json}': ${problem}`);
    // A missing one is still called missing, and a model file that is not a file is refused too.
    fs.rmSync(json, { recursive: true });
    expect(() => loadCheckpoint(dir)).toThrow(`no checkpoint in '${dir}': checkpoint.json is missing`);
  });

  it('refuses a checkpoint.json larger than 64 MiB before reading it', () => {
    const { dir, json } = savedCheckpoint();
    fs.truncateSync(json, 64 * 1024 * 1024 + 1);
    expect(() => loadCheckpoint(dir)).toThrow(`loadCheckpoint: cannot read '${json}': it is 67108865 bytes, more than the 67108864 such a file may hold`);
  });

  const cases: Array<[string, (json: any) => void, string]> = [
    ['a foreign format', (c) => { c.format = 'other'; }, 'format is "other", not "torch-early-exit checkpoint"'],
    ['another version', (c) => { c.version = 9; }, 'version is 9; this library reads version 1'],
    ['exit points that are not strings', (c) => { c.exitPoints = [3]; }, 'exitPoints[0] is 3, not a string'],
    ['branches of another length', (c) => { c.branches.push(c.branches[0]); }, 'branches has 2 entries for 1 exit points'],
    ['an unknown branch type', (c) => { c.branches[0].type = 'pickle'; }, 'branches[0].type is "pickle", not "nn" or "torchscript"'],
    ['an nn branch without a spec', (c) => { delete c.branches[0].spec; }, 'branches[0].spec is missing, not a module spec object'],
    ['a torchscript branch with the nn file name', (c) => { c.branches[0] = { type: 'torchscript', file: 'exit-0.pt' }; }, 'branches[0].file is "exit-0.pt", but must be "exit-0.ts.pt"'],
    ['optimizer groups that are not an array', (c) => { c.optimizer.paramGroups = {}; }, 'optimizer.paramGroups is {}, not an array'],
    ['optimizer scalars of another kind', (c) => { c.optimizer.scalars = { '0.step': 'one' }; }, 'optimizer.scalars["0.step"] is "one", not a number'],
    ['an epoch that is not a number', (c) => { c.epoch = 'two'; }, 'epoch is "two", not a number'],
  ];
  it.each(cases)('refuses %s, naming the file and the field', (_, edit, problem) => {
    const { message, json } = loadEdited(edit);
    expect(message).toBe(`loadCheckpoint: '${json}' is invalid: ${problem}`);
  });

  it('loads what it saved', () => {
    const { dir } = savedCheckpoint();
    const loaded = loadCheckpoint(dir);
    expect(loaded.epoch).toBe(2);
    expect(loaded.optimizerState!.paramGroups[0].lr).toBe(0.1);
  });
});
