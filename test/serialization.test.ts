/**
 * torch.save files exchanged with Python both ways: what this library writes is what
 * Python's torch.save writes for a dict of tensors, so Python's torch.load reads it (with
 * weights_only=True where this PyTorch's safe unpickler can: 1.13's lacks floats), and
 * what Python writes (OrderedDict state dicts, tuples, views, parameters) reads here.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor, torch } from '../lib';
import { binding } from '../lib/binding';
import { python, pythonWithTorch } from './helpers';

const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-serialization-'));
const file = (name: string) => path.join(folder, name);

describe('torch.save from Node, torch.load in Python', () => {
  it('tensors of every dtype, nested containers and int64 edges, read exactly, with weights_only', () => {
    const target = file('node.pt');
    torch.save({
      f32: torch.arange(0, 6, 1, { dtype: 'float32' }).reshape([2, 3]),
      f64: torch.tensor([0.1, -2.5], { dtype: 'float64' }),
      f16: torch.tensor([1.5, -0.25], { dtype: 'float16' }),
      bf16: torch.tensor([3, -4], { dtype: 'bfloat16' }),
      i64: torch.tensor([1, -2], { dtype: 'int64' }),
      i32: torch.tensor([7], { dtype: 'int32' }),
      u8: torch.tensor([255, 0], { dtype: 'uint8' }),
      b: torch.tensor([true, false], { dtype: 'bool' }),
      transposed: torch.arange(0, 6, 1, { dtype: 'float32' }).reshape([2, 3]).transpose(0, 1),
      scalar: torch.tensor(5, { dtype: 'int64' }),
      empty: torch.zeros([0, 3]),
      nested: { list: [1, [2, null]], yes: true, text: 'é' },
      max: 2n ** 63n - 1n, min: -(2n ** 63n), big: 2 ** 40,
    }, target);
    const out = JSON.parse(python(`import torch, json
d = torch.load(${JSON.stringify(target)}, weights_only=True)
print(json.dumps({k: [str(v.dtype), list(v.shape), v.tolist()] if torch.is_tensor(v) else v for k, v in d.items()}))`));
    expect(out.f32).toEqual(['torch.float32', [2, 3], [[0, 1, 2], [3, 4, 5]]]);
    expect(out.f64).toEqual(['torch.float64', [2], [0.1, -2.5]]);
    expect(out.f16).toEqual(['torch.float16', [2], [1.5, -0.25]]);
    expect(out.bf16).toEqual(['torch.bfloat16', [2], [3, -4]]);
    expect(out.i64).toEqual(['torch.int64', [2], [1, -2]]);
    expect(out.i32).toEqual(['torch.int32', [1], [7]]);
    expect(out.u8).toEqual(['torch.uint8', [2], [255, 0]]);
    expect(out.b).toEqual(['torch.bool', [2], [true, false]]);
    expect(out.transposed).toEqual(['torch.float32', [3, 2], [[0, 3], [1, 4], [2, 5]]]);
    expect(out.scalar).toEqual(['torch.int64', [], 5]);
    expect(out.empty).toEqual(['torch.float32', [0, 3], []]);
    expect(out.nested).toEqual({ list: [1, [2, null]], yes: true, text: 'é' });
    expect(out.big).toBe(2 ** 40);
    // JSON cannot carry int64 exactly: Python compares them.
    expect(python(`import torch; d = torch.load(${JSON.stringify(target)}); print(d['max'] == 2**63 - 1, d['min'] == -2**63)`).trim()).toBe('True True');
  });

  it('floats outside tensors: plain torch.load (1.13\'s safe unpickler has no float opcode; 2.6\'s has)', () => {
    const target = file('floats.pt');
    torch.save({ lr: 0.1, nan: NaN, inf: -Infinity }, target);
    expect(python(`import torch, math; d = torch.load(${JSON.stringify(target)}); print(d['lr'], math.isnan(d['nan']), d['inf'])`).trim())
      .toBe('0.1 True -inf');
  });
});

describe('torch.save from Python, torch.load in Node', () => {
  it("a module's state_dict (an OrderedDict with _metadata), value for value", () => {
    const target = file('sd.pt');
    const expected = JSON.parse(python(`import torch, json; torch.manual_seed(1)
m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
m(torch.randn(4, 1, 5, 5))
torch.save(m.state_dict(), ${JSON.stringify(target)})
print(json.dumps({k: v.tolist() for k, v in m.state_dict().items()}))`));
    const loaded = torch.load(target) as Record<string, Tensor>;
    expect(Object.keys(loaded)).toEqual(Object.keys(expected));
    for (const [key, value] of Object.entries(expected)) expect(loaded[key].toArray()).toEqual(value);
    expect(loaded['1.num_batches_tracked'].dtype).toBe('int64');
  });

  it('views keep their storage, offsets and strides; tuples become arrays; parameters keep requires_grad', () => {
    const target = file('views.pt');
    python(`import torch
base = torch.arange(12.).reshape(3, 4)
torch.save({'row': base[1], 't': base.t(), 'slice': base[:, 1:3], 'pair': (1, 'two'), 'p': torch.nn.Parameter(torch.ones(2)), 'h': torch.tensor([0.5], dtype=torch.half)}, ${JSON.stringify(target)})`);
    const loaded = torch.load(target);
    expect(loaded.row.toArray()).toEqual([4, 5, 6, 7]);
    expect(loaded.t.toArray()).toEqual([[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]);
    expect(loaded.slice.toArray()).toEqual([[1, 2], [5, 6], [9, 10]]);
    expect(loaded.pair).toEqual([1, 'two']);
    expect(loaded.p.requiresGrad).toBe(true);
    expect(loaded.h.dtype).toBe('float16');
  });

  it('a damaged pickle is an Error at once (LibTorch\'s unpickler, 1.13 and 2.6, loops without end on this one)', () => {
    // Found by the fuzz suite (npm run fuzz -- --seed 5 --replay files:365): bytes inserted
    // into the data.pkl of the fuzz's torch.save file, the archive rewritten with right CRCs.
    const base = file('fuzz-base.pt');
    torch.manualSeed(5);
    torch.save({ weight: torch.randn([64, 32]), bias: torch.arange(32, undefined, 1, { dtype: 'float32' }) }, base);
    const job = file('fuzz-job.json');
    fs.writeFileSync(job, JSON.stringify({ seed: 5, out: folder, cases: [{ id: 365, base, family: 'content' }] }));
    const made = JSON.parse(execFileSync(pythonWithTorch(), [path.join(__dirname, '..', 'scripts', 'fuzz_files.py'), job], { encoding: 'utf8' }))['365'];
    expect(made.mutation).toBe('content-insert:archive/data.pkl');
    expect(made.damaged).toBe(false);
    expect(() => torch.load(made.path)).toThrow(new RegExp(`^torch\\.load: cannot read '${made.path}': archive/data\\.pkl is damaged: pickle opcode 0x6f at byte \\d+ is not one torch\\.save files use`));
  });

  it('refuses what weights_only refuses, naming the global', () => {
    const target = file('class.pt');
    python(`import torch, collections; torch.save({'c': collections.Counter('aab')}, ${JSON.stringify(target)})`);
    expect(() => torch.load(target)).toThrow(/needs the Python global collections\.Counter, which torch\.load with weights_only does not allow/);
  });
});

describe('files of earlier versions', () => {
  it("LibTorch's own pickler's files (what torch.save wrote before) still load", () => {
    const target = file('libtorch.pt');
    fs.writeFileSync(target, binding.pickleSave({ w: torch.tensor([1, 2], { dtype: 'float32' }).native, n: 3, ints: [1, 2], floats: [0.5], flags: [true], nested: { t: [torch.ones([2]).native] } }));
    const loaded = torch.load(target);
    expect(loaded.w.toArray()).toEqual([1, 2]);
    expect(loaded.n).toBe(3);
    expect([loaded.ints, loaded.floats, loaded.flags]).toEqual([[1, 2], [0.5], [true]]);
    expect(loaded.nested.t[0].toArray()).toEqual([1, 1]);
  });
});
