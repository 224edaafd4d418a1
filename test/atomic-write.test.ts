import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { torch } from '../lib';
import { writeFileAtomic } from '../lib/io/atomic-write';
import { fillDisk, python } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-atomic-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Names in `dir` that look like a leftover temporary file. */
const leftovers = (dir: string) => fs.readdirSync(dir).filter((name) => name.endsWith('.tmp'));

describe('writeFileAtomic', () => {
  it('writes the bytes, replaces a file, keeps its permissions and leaves no temporary file', () => {
    const file = path.join(tmp, 'a.bin');
    writeFileAtomic(file, Buffer.from([1, 2, 3]), 'test');
    expect([...fs.readFileSync(file)]).toEqual([1, 2, 3]);
    fs.chmodSync(file, 0o600);
    writeFileAtomic(file, 'text', 'test');
    expect(fs.readFileSync(file, 'utf8')).toBe('text');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(leftovers(tmp)).toEqual([]);
  });

  it('replaces the file a symbolic link points to and keeps the link', () => {
    const real = path.join(tmp, 'real.txt');
    const link = path.join(tmp, 'link.txt');
    fs.writeFileSync(real, 'old');
    fs.symlinkSync(real, link);
    writeFileAtomic(link, 'new', 'test');
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(real, 'utf8')).toBe('new');
  });

  it('refuses /dev/full, a directory and a socket, and leaves them as they were', async () => {
    expect(() => writeFileAtomic('/dev/full', 'x', 'test')).toThrow("test: cannot write '/dev/full': it is a character device, not a regular file");
    expect(fs.statSync('/dev/full').isCharacterDevice()).toBe(true);
    expect(() => torch.save({ w: torch.ones([4]) }, '/dev/full')).toThrow("torch.save: cannot write '/dev/full': it is a character device, not a regular file");
    expect(fs.statSync('/dev/full').isCharacterDevice()).toBe(true);
    expect(leftovers('/dev')).toEqual([]);

    const folder = path.join(tmp, 'folder');
    fs.mkdirSync(folder);
    fs.writeFileSync(path.join(folder, 'inside'), 'kept');
    expect(() => torch.save({ n: 1 }, folder)).toThrow(`torch.save: cannot write '${folder}': it is a directory, not a regular file`);
    expect(fs.readFileSync(path.join(folder, 'inside'), 'utf8')).toBe('kept');

    const socket = path.join(tmp, 'sock');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      expect(() => writeFileAtomic(socket, 'x', 'test')).toThrow(`test: cannot write '${socket}': it is a socket, not a regular file`);
      expect(fs.statSync(socket).isSocket()).toBe(true);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('names the path and ENOENT when the folder is missing', () => {
    const file = path.join(tmp, 'no', 'such', 'f.pt');
    expect(() => torch.save({ n: 1 }, file)).toThrow(new RegExp(`^torch\\.save: cannot write '${file}': .*ENOENT`));
  });
});

describe('torch.save on a full disk', () => {
  const mountPoint = path.join(tmp, 'small-disk');
  let mounted = false;
  let reason = '';
  try {
    fs.mkdirSync(mountPoint);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mountPoint], { stdio: 'pipe' });
    mounted = true;
  } catch (error) {
    reason = `cannot mount a 256 KiB tmpfs (${(error as Error).message.split('\n')[0]})`;
    console.log(`skipping the full-disk test: ${reason}`);
  }
  afterAll(() => {
    if (mounted) execFileSync('umount', [mountPoint]);
  });

  (mounted ? it : it.skip)(`fails with ENOSPC, naming the path, and leaves the old file whole${mounted ? '' : ` (skipped: ${reason})`}`, () => {
    const file = path.join(mountPoint, 'state.pt');
    torch.save({ w: torch.arange(0, 6, 1, { dtype: 'float32' }).reshape([2, 3]), step: 7 }, file);
    const before = fs.readFileSync(file);
    const filler = path.join(mountPoint, 'filler');
    fillDisk(filler);
    let failure: Error | undefined;
    try {
      torch.save({ w: torch.zeros([1_000_000]) }, file);
    } catch (error) {
      failure = error as Error;
    }
    expect(failure).toBeInstanceOf(Error);
    expect(failure!.message).toMatch(new RegExp(`^torch\\.save: cannot write '${file}': .*ENOSPC`));
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(leftovers(mountPoint)).toEqual([]);
    const back = torch.load(file);
    expect(back.w.toArray()).toEqual([[0, 1, 2], [3, 4, 5]]);
    expect(back.step).toBe(7);
    const fromPython = JSON.parse(python(`import torch, json; d = torch.load(${JSON.stringify(file)}); print(json.dumps({"w": d["w"].tolist(), "step": d["step"]}))`));
    expect(fromPython).toEqual({ w: [[0, 1, 2], [3, 4, 5]], step: 7 });
  });
});

describe('torch.save refuses what it cannot write faithfully', () => {
  class Point { constructor(public x = 1) {} }
  const cyclic: Record<string, unknown> = { a: { b: 1 } };
  (cyclic.a as Record<string, unknown>).back = cyclic;
  const cases: Array<[string, unknown, string]> = [
    ['a function', { w: torch.ones([1]), f: () => 1 }, 'value.f is a function'],
    ['undefined', { opts: { lr: undefined } }, 'value.opts.lr is undefined'],
    ['a symbol', { s: Symbol('s') }, 'value.s is a symbol'],
    ['a Map', { layers: [1, new Map()] }, 'value.layers[1] is a Map'],
    ['a Set', { 'odd key': new Set([1]) }, 'value["odd key"] is a Set'],
    ['a Date', { when: new Date(0) }, 'value.when is a Date'],
    ['a class instance', { p: new Point() }, 'value.p is an instance of Point'],
    ['a typed array', { t: new Float32Array(2) }, 'value.t is a Float32Array (make it a Tensor with torch.tensor)'],
    ['a cycle', cyclic, 'value.a.back is a reference back to an object that contains it (a cycle)'],
    ['a bigint past int64', { n: 2n ** 63n }, 'value.n is the bigint 9223372036854775808, outside the int64 range'],
    ['a bigint below int64', { n: -(2n ** 63n) - 1n }, 'value.n is the bigint -9223372036854775809, outside the int64 range'],
    ['a sparse array', { list: [1, , 3] }, 'value.list[1] is a hole in a sparse array'],
  ];
  it.each(cases)('%s, naming the key and writing nothing', (_, value, message) => {
    const file = path.join(tmp, 'refused.pt');
    expect(() => torch.save(value as never, file)).toThrow(
      `torch.save: ${message}; torch.save writes Tensors, numbers, bigints (int64), strings, booleans, null, arrays and plain objects`);
    expect(fs.existsSync(file)).toBe(false);
  });

  it('writes NaN, infinities and int64 bigints, as Python reads them', () => {
    const file = path.join(tmp, 'values.pt');
    const bare = Object.assign(Object.create(null) as Record<string, unknown>, { w: torch.ones([2]) });
    torch.save({ nan: NaN, inf: Infinity, ninf: -Infinity, big: 2n ** 63n - 1n, small: -(2n ** 63n), bare } as never, file);
    const out = python(`import torch; d = torch.load(${JSON.stringify(file)})
print(repr(d["nan"]), repr(d["inf"]), repr(d["ninf"]), d["big"], d["small"], type(d["big"]).__name__, d["bare"]["w"].tolist())`).trim();
    expect(out).toBe('nan inf -inf 9223372036854775807 -9223372036854775808 int [1.0, 1.0]');
  });
});
