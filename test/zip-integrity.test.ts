import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { inflateRaw } from '../lib/io/inflate';
import { crc32, crc32Portable, verifyZipArchive } from '../lib/io/zip-integrity';
import { fixture, python } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-zip-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** What Python's zipfile says of an archive: the entry testzip finds bad, or the error opening it. */
function pythonVerdict(file: string): string {
  return python(`import zipfile
try:
    bad = zipfile.ZipFile(${JSON.stringify(file)}).testzip()
    print("ok" if bad is None else "bad:" + bad)
except Exception as e:
    print("error:" + type(e).__name__)`).trim();
}

/** The largest tensor data entry of an archive, where its data starts, and its recorded CRC, read by Python. */
function largestDataEntry(file: string): { name: string; start: number; size: number; crc: number } {
  return JSON.parse(python(`import zipfile, struct, json
zf = zipfile.ZipFile(${JSON.stringify(file)})
info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
raw = open(${JSON.stringify(file)}, "rb").read()
n, e = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
print(json.dumps({"name": info.filename, "start": info.header_offset + 30 + n + e, "size": info.file_size, "crc": info.CRC}))`));
}

/** Copies `source` into the temp folder under `name`, changed by `change`. */
function damagedCopy(source: string, name: string, change: (bytes: Buffer) => Buffer): string {
  const file = path.join(tmp, name);
  fs.writeFileSync(file, change(fs.readFileSync(source)));
  return file;
}

const hex = (value: number) => `0x${value.toString(16).padStart(8, '0')}`;

function checkDamage(source: string, label: string): void {
  const what = `cannot load TorchScript model '${label}'`;
  const entry = largestDataEntry(source);
  const flipped = damagedCopy(source, `${label}-flipped.pt`, (bytes) => {
    bytes[entry.start + Math.floor(entry.size / 2)] ^= 0x40;
    return bytes;
  });
  const damagedCrc = Number(python(`import zlib; raw = open(${JSON.stringify(flipped)}, "rb").read()
print(zlib.crc32(raw[${entry.start}:${entry.start + entry.size}]))`).trim());
  expect(pythonVerdict(flipped)).toBe(`bad:${entry.name}`);
  expect(() => verifyZipArchive(fs.readFileSync(flipped), what)).toThrow(
    `${what}: entry '${entry.name}' is damaged: its CRC-32 is ${hex(damagedCrc)} but the archive records ${hex(entry.crc)}`);

  const half = damagedCopy(source, `${label}-half.pt`, (bytes) => bytes.subarray(0, Math.floor(bytes.length / 2)));
  expect(pythonVerdict(half)).toBe('error:BadZipFile');
  expect(() => verifyZipArchive(fs.readFileSync(half), what)).toThrow(
    new RegExp(`^${what.replace(/[.()']/g, '\\$&')}: the file is truncated or not a zip archive: no end-of-central-directory record`));

  const cut = damagedCopy(source, `${label}-cut.pt`, (bytes) => bytes.subarray(0, bytes.length - 22));
  expect(pythonVerdict(cut)).toBe('error:BadZipFile');
  expect(() => verifyZipArchive(fs.readFileSync(cut), what)).toThrow(/: the file is truncated or not a zip archive: no end-of-central-directory record/);

  const untouched = damagedCopy(source, `${label}-copy.pt`, (bytes) => bytes);
  expect(pythonVerdict(untouched)).toBe('ok');
  expect(() => verifyZipArchive(fs.readFileSync(untouched), what)).not.toThrow();
}

describe('crc32', () => {
  it("equals Python's zlib.crc32, with zlib.crc32 and with the table", () => {
    const buffers = [Buffer.alloc(0), Buffer.from('hello'), Buffer.from(Array.from({ length: 256 }, (_, i) => i)), crypto.randomBytes(100_003)];
    const files = buffers.map((buffer, i) => {
      const file = path.join(tmp, `crc-${i}.bin`);
      fs.writeFileSync(file, buffer);
      return file;
    });
    const expected = JSON.parse(python(`import zlib, json
print(json.dumps([zlib.crc32(open(f, "rb").read()) for f in ${JSON.stringify(files)}]))`));
    expect(buffers.map(crc32)).toEqual(expected);
    expect(buffers.map(crc32Portable)).toEqual(expected);
    expect(crc32(new Uint8Array(buffers[3].buffer, buffers[3].byteOffset + 1, 10))).toBe(crc32Portable(buffers[3].subarray(1, 11)));
  });
});

describe('verifyZipArchive', () => {
  it('finds a flipped byte, a file cut in half and a lost end record in a TorchScript file; passes it whole', () => {
    checkDamage(fixture('resnet20_scripted.pt'), 'resnet20');
  });

  it("does the same for a Python torch.save file", () => {
    const saved = path.join(tmp, 'saved.pt');
    python(`import torch; torch.save({"w": torch.arange(10.)}, ${JSON.stringify(saved)})`);
    checkDamage(saved, 'saved');
  });

  it('passes a torch.jit.save model with entries over 64 KiB', () => {
    const big = path.join(tmp, 'big.pt');
    const sizes = JSON.parse(python(`import torch, zipfile, json
torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))), ${JSON.stringify(big)})
print(json.dumps(sorted(i.file_size for i in zipfile.ZipFile(${JSON.stringify(big)}).infolist())))`));
    expect(sizes[sizes.length - 1]).toBeGreaterThan(65535);
    expect(() => verifyZipArchive(fs.readFileSync(big), 'big.pt')).not.toThrow();
  });

  it('reads a zip64 end record (65536 entries) and checks deflated entries', () => {
    const many = path.join(tmp, 'many.zip');
    const info = JSON.parse(python(`import zipfile, json, struct
with zipfile.ZipFile(${JSON.stringify(many)}, "w") as zf:
    for i in range(65536):
        zf.writestr("e/%d" % i, b"x" * (i % 7))
    zf.writestr(zipfile.ZipInfo("deflated"), b"early exit " * 1000, compress_type=zipfile.ZIP_DEFLATED)
raw = open(${JSON.stringify(many)}, "rb").read()
i = zipfile.ZipFile(${JSON.stringify(many)}).getinfo("deflated")
n, e = struct.unpack("<HH", raw[i.header_offset + 26:i.header_offset + 30])
print(json.dumps({"zip64": raw.rfind(struct.pack("<I", 0x06064b50)) > 0, "entries": struct.unpack("<H", raw[-12:-10])[0],
  "start": i.header_offset + 30 + n + e, "size": i.compress_size}))`));
    expect(info.zip64).toBe(true);
    expect(info.entries).toBe(0xffff);
    const bytes = fs.readFileSync(many);
    expect(() => verifyZipArchive(bytes, 'many.zip')).not.toThrow();
    bytes[info.start + Math.floor(info.size / 2)] ^= 0x01;
    expect(() => verifyZipArchive(bytes, 'many.zip')).toThrow(/^many\.zip: entry 'deflated' is damaged: /);
  });

  it('names an entry whose data runs past the end of the file', () => {
    const bytes = fs.readFileSync(fixture('resnet20_scripted.pt'));
    const entry = largestDataEntry(fixture('resnet20_scripted.pt'));
    const eocd = bytes.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
    const centralOffset = bytes.readUInt32LE(eocd + 16);
    // Make the largest entry's recorded sizes reach past the end of the file, in its central directory entry.
    let at = centralOffset;
    for (;;) {
      const nameLength = bytes.readUInt16LE(at + 28);
      if (bytes.toString('utf8', at + 46, at + 46 + nameLength) === entry.name) break;
      at += 46 + nameLength + bytes.readUInt16LE(at + 30) + bytes.readUInt16LE(at + 32);
    }
    bytes.writeUInt32LE(bytes.length, at + 20);
    bytes.writeUInt32LE(bytes.length, at + 24);
    expect(() => verifyZipArchive(bytes, 'x.pt')).toThrow(
      `x.pt: entry '${entry.name}' ends at byte ${entry.start + bytes.length} but the file has ${bytes.length} bytes`);
  });
});

describe('inflateRaw (plain JavaScript, in place of zlib handles a terminated worker aborts on)', () => {
  it("inflates what zlib deflates, at every level, and every deflated entry of the fixtures as Node's zlib does", () => {
    const zlib = require('zlib') as typeof import('zlib');
    const inputs = [Buffer.alloc(0), Buffer.from('a'), crypto.randomBytes(70000), Buffer.from('early exit '.repeat(9000)),
      Buffer.from(JSON.stringify(Array.from({ length: 5000 }, (_, i) => i * 1.25)))];
    for (const input of inputs) {
      for (let level = 0; level <= 9; level++) {
        const deflated = zlib.deflateRawSync(input, { level });
        const { output, consumed } = inflateRaw(deflated, input.length);
        expect(output.equals(input)).toBe(true);
        expect(consumed).toBe(deflated.length);
      }
    }
    let entries = 0;
    for (const name of fs.readdirSync(path.dirname(fixture('resnet20_scripted.pt'))).filter((file) => file.endsWith('.pt') && file !== 'corrupt.pt')) {
      const raw = fs.readFileSync(fixture(name));
      const listed = JSON.parse(python(`import zipfile, struct, json
zf = zipfile.ZipFile(${JSON.stringify(fixture(name))})
raw = open(${JSON.stringify(fixture(name))}, "rb").read()
out = []
for i in zf.infolist():
    if i.compress_type == 8:
        n, e = struct.unpack("<HH", raw[i.header_offset + 26:i.header_offset + 30])
        out.append([i.header_offset + 30 + n + e, i.compress_size, i.file_size])
print(json.dumps(out))`)) as Array<[number, number, number]>;
      for (const [start, size, full] of listed) {
        const data = raw.subarray(start, start + size);
        expect(inflateRaw(data, full).output.equals(zlib.inflateRawSync(data))).toBe(true);
        entries++;
      }
    }
    expect(entries).toBeGreaterThan(500);
  });

  it('jit.load creates no zlib handle (each was a chance for a terminated worker to abort the process)', () => {
    const asyncHooks = require('async_hooks') as typeof import('async_hooks');
    const { jit } = require('../lib') as typeof import('../lib');
    const types: string[] = [];
    const hook = asyncHooks.createHook({ init: (_id, type) => { types.push(type); } }).enable();
    try {
      jit.load(fixture('resnet20_scripted.pt'));
      // The control: Node's own deflate and inflate make one each (jit.load of this file made 52 before).
      require('zlib').inflateRawSync(require('zlib').deflateRawSync(Buffer.from('x')));
    } finally {
      hook.disable();
    }
    expect(types.filter((type) => type === 'ZLIB')).toHaveLength(2);
  });

  it('refuses damaged streams and output past the recorded size with an Error, never a hang', () => {
    const zlib = require('zlib') as typeof import('zlib');
    const input = Buffer.from('torch early exit '.repeat(500));
    const deflated = zlib.deflateRawSync(input);
    expect(() => inflateRaw(deflated, input.length - 1)).toThrow(`the deflated data inflates past ${input.length - 1} bytes, the size the archive records`);
    expect(() => inflateRaw(deflated.subarray(0, deflated.length >> 1), input.length)).toThrow('the deflated data ends in the middle of a block');
    expect(() => inflateRaw(Buffer.from([0x07]), 10)).toThrow('the deflated data has a block of the invalid type 3');
    let errors = 0;
    for (let i = 0; i < 2000; i++) {
      const damaged = Buffer.from(deflated);
      damaged[Math.floor(Math.random() * damaged.length)] ^= 1 + Math.floor(Math.random() * 255);
      let zlibSays: string;
      try { zlibSays = zlib.inflateRawSync(damaged).equals(input) ? 'same' : 'other'; } catch { zlibSays = 'error'; }
      let oursSays: string;
      try { oursSays = inflateRaw(damaged, 1 << 20).output.equals(input) ? 'same' : 'other'; } catch { oursSays = 'error'; errors++; }
      // Where zlib finds the damage, so does this; where zlib inflates, this inflates the same bytes.
      if (zlibSays !== 'error') expect(oursSays).toBe(zlibSays);
    }
    expect(errors).toBeGreaterThan(100);
  });
});
