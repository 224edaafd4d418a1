/**
 * Valid archives with damaged content: the zip's CRCs agree (the archive was written again
 * after the damage), so only a check of what the pickles say against what the entries hold
 * can see it. LibTorch reads a storage shorter than its tensors past its end (NaN, garbage
 * or SIGSEGV) and one longer without a word; each must be an Error naming the file, the entry
 * and the tensor. The archives are rewritten by Python's zipfile, not by this library.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, jit, loadCheckpoint, nn, saveCheckpoint, torch } from '../lib';
import { PickleWriter } from '../lib/io/pickle';
import { zipStored } from '../lib/io/zip-writer';
import { fixture, python } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-content-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/**
 * A copy of the archive `source` at `name` in which Python changed entries: `edit` is Python
 * code over `name` (the entry's name) and `data` (its bytes) that sets `data`; `extra` adds entries.
 */
function rewritten(source: string, name: string, edit: string, extra: Record<string, string> = {}): string {
  const target = path.join(tmp, name);
  python(`import zipfile
src = zipfile.ZipFile(${JSON.stringify(source)})
with zipfile.ZipFile(${JSON.stringify(target)}, "w", zipfile.ZIP_STORED) as out:
    for name in src.namelist():
        data = src.read(name)
${edit.split('\n').map((line) => `        ${line}`).join('\n')}
        out.writestr(name, data)
    for name, text in ${JSON.stringify(extra)}.items():
        out.writestr(name, text.encode())`);
  return target;
}

const ones = () => torch.ones([1, 3, 32, 32]);
const output = (file: string) => Array.from((torch.noGrad(() => jit.load(file).forward(ones())) as ReturnType<typeof torch.ones>).data() as Float32Array);
const quoted = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('TorchScript archives: every tensor fits its storage', () => {
  const source = fixture('resnet20_scripted.pt');
  const what = (file: string) => `cannot load TorchScript model '${file}'`;

  it('loads an archive that Python rewrote unchanged, with the same output (the control)', () => {
    const copy = rewritten(source, 'same.pt', 'pass');
    expect(output(copy)).toEqual(output(source));
  });

  it('refuses a storage cut short, naming the tensor, the entry and the sizes (LibTorch read past its end)', () => {
    const cut = rewritten(source, 'cut.pt', 'if name == "resnet20_scripted/data/54": data = data[:-4]');
    expect(() => jit.load(cut)).toThrow(`${what(cut)}: tensor 'layer2.0.downsample.0.weight': the storage resnet20_scripted/data/54 has 2044 bytes; ` +
      'resnet20_scripted/data.pkl records 512 float32 elements, which take 2048');
  });

  it('refuses a storage with bytes inserted (LibTorch read its tensors shifted)', () => {
    const longer = rewritten(source, 'longer.pt', 'if name == "resnet20_scripted/data/0": data = data[:8] + bytes(4) + data[8:]');
    expect(() => jit.load(longer)).toThrow(`${what(longer)}: tensor 'conv1.weight': the storage resnet20_scripted/data/0 has 1732 bytes; ` +
      'resnet20_scripted/data.pkl records 432 float32 elements, which take 1728');
  });

  it('refuses a storage entry its pickle never names', () => {
    const orphan = rewritten(source, 'orphan.pt', 'pass', { 'resnet20_scripted/data/999': 'abcd' });
    expect(() => jit.load(orphan)).toThrow(`${what(orphan)}: the archive holds the storage resnet20_scripted/data/999, which its pickle never names`);
  });

  it('refuses bytes after the pickle\'s STOP', () => {
    const trailing = rewritten(source, 'trailing.pt', 'if name == "resnet20_scripted/data.pkl": data = data + b"."');
    expect(() => jit.load(trailing)).toThrow(new RegExp(`^${quoted(what(trailing))}: resnet20_scripted/data.pkl is damaged: the pickle stops at byte \\d+ of \\d+: 1 bytes follow its end`));
  });

  it('refuses a class constant without a type in the code (LibTorch 1.13: SIGSEGV; 2.6 and later refuse it)', () => {
    const code = 'mnist_cnn/code/__torch__/torch/nn/modules/linear/___torch_mangle_207.py';
    const damaged = rewritten(fixture('mnist_cnn.pt'), 'constant.pt', `if name == ${JSON.stringify(code)}: data = data.replace(b"__buffers__", b"_5buffers__")`);
    expect(() => jit.load(damaged)).toThrow(`${what(damaged)}: its TorchScript code is damaged: ${code.slice('mnist_cnn/'.length)}, line 3: ` +
      "the class constant '_5buffers__' has no type (Expected a type to present for class constant)");
  });
});

describe('torch.load: every tensor fits its storage', () => {
  /** A torch.save file whose pickle places a float32 tensor of `size` at `offset` in a storage of `numel` elements, holding `bytes`. */
  function craft(name: string, numel: number, bytes: number, offset: number, size: number[]): string {
    const pickle = new PickleWriter();
    pickle.dict(1, () => {
      pickle.string('w');
      pickle.reduce(() => pickle.global('torch._utils', '_rebuild_tensor_v2'), () => {
        pickle.persistent(() => { pickle.string('storage'); pickle.global('torch', 'FloatStorage'); pickle.string('0'); pickle.string('cpu'); pickle.int(numel); });
        pickle.int(offset);
        pickle.tuple(() => size.forEach((n) => pickle.int(n)));
        pickle.tuple(() => size.forEach((_, i) => pickle.int(size.slice(i + 1).reduce((a, b) => a * b, 1))));
        pickle.bool(false);
        pickle.reduce(() => pickle.global('collections', 'OrderedDict'), () => undefined);
      });
    });
    const file = path.join(tmp, name);
    fs.writeFileSync(file, zipStored([['archive/data.pkl', pickle.finish()], ['archive/data/0', Buffer.alloc(bytes)],
      ['archive/version', Buffer.from('3\n')]], 'test'));
    return file;
  }

  it('reads a tensor that fits (the control), as Python does', () => {
    const fits = craft('fits.pt', 4, 16, 1, [3]);
    expect(Array.from(torch.load(fits).w.data())).toEqual([0, 0, 0]);
    expect(python(`import torch; print(torch.load(${JSON.stringify(fits)}, weights_only=True)["w"].shape)`).trim()).toBe('torch.Size([3])');
  });

  it('refuses a tensor that reaches past its storage, naming it', () => {
    const past = craft('past.pt', 4, 16, 2, [3]);
    expect(() => torch.load(past)).toThrow(`torch.load: cannot read '${past}': tensor 'w': its shape [3], strides [1] and offset 2 ` +
      'over archive/data/0 reach element 4, past the end of its storage of 4 elements');
  });

  it('refuses a storage longer than its recorded count', () => {
    const longer = craft('longer-storage.pt', 4, 20, 0, [4]);
    expect(() => torch.load(longer)).toThrow(`torch.load: cannot read '${longer}': tensor 'w': the storage archive/data/0 has 20 bytes; ` +
      'archive/data.pkl records 4 float32 elements, which take 16');
  });
});

describe('checkpoints: each file is checked against the SHA-256 checkpoint.json records', () => {
  function saved(name: string): string {
    torch.manualSeed(3);
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')),
      [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
    const dir = path.join(tmp, name);
    saveCheckpoint(dir, model);
    return dir;
  }
  const outputs = (dir: string) => torch.noGrad(() => loadCheckpoint(dir).model.eval().forward(ones())).map((t) => Array.from(t.data() as Float32Array));

  it('refuses a branch whose weights were changed in a valid archive (a flipped byte, CRCs recomputed)', () => {
    const dir = saved('flipped');
    const before = outputs(dir);
    const file = path.join(dir, 'exit-0.pt');
    const copy = rewritten(file, 'exit-0-flipped.pt', 'if name.endswith("/data/0"): data = bytes([data[0] ^ 0x40]) + data[1:]');
    fs.copyFileSync(copy, file);
    // The archive itself is valid: torch.load alone reads other weights without a word.
    expect(() => torch.load(file)).not.toThrow();
    expect(() => loadCheckpoint(dir)).toThrow(new RegExp(`^loadCheckpoint: '${quoted(file)}' is damaged or was changed after saveCheckpoint wrote it: ` +
      'it has \\d+ bytes with SHA-256 [0-9a-f]{64}; checkpoint.json records \\d+ bytes with SHA-256 [0-9a-f]{64}$'));
    expect(before[0].length).toBe(10);
  });

  it('loads a checkpoint written before the digests (no "files" in checkpoint.json) as before', () => {
    const dir = saved('old');
    const before = outputs(dir);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'checkpoint.json'), 'utf8'));
    expect(Object.keys(json.files).sort()).toEqual(['backbone.pt', 'exit-0.pt']);
    delete json.files;
    fs.writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify(json));
    expect(outputs(dir)).toEqual(before);
  });
});
