/**
 * Integrity checks of zip archives, the container of TorchScript files (`torch.jit.save`)
 * and `torch.save` files. PyTorch writes them with miniz: entries are usually STORED,
 * and big files carry zip64 extra fields and a zip64 end-of-central-directory record.
 * `verifyZipArchive` finds a damaged or truncated file before LibTorch reads it, and
 * says which entry is wrong.
 */
import * as zlib from 'zlib';
import { inflateRaw } from './inflate';
import { readRegularFile } from './regular-file';

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const EOCD_SIZE = 22;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
const MAX_COMMENT = 0xffff;
const ZIP64_EXTRA_ID = 0x0001;

let crcTable: Uint32Array | undefined;

/** The CRC-32 (IEEE 802.3, as zip and Python's `zlib.crc32` compute it) of `bytes`, table-driven, in JavaScript. */
export function crc32Portable(bytes: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  const table = crcTable;
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = table[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

type Crc32Function = (data: Uint8Array, value?: number) => number;
const nativeCrc32 = (zlib as unknown as { crc32?: Crc32Function }).crc32;

/**
 * The CRC-32 of `bytes` as an unsigned 32-bit number, equal to Python's `zlib.crc32`.
 * Uses Node's `zlib.crc32` where it exists (Node 20.15 and later), `crc32Portable` otherwise.
 */
export function crc32(bytes: Uint8Array): number {
  return typeof nativeCrc32 === 'function' ? nativeCrc32(bytes) >>> 0 : crc32Portable(bytes);
}

/** `0x` and eight hexadecimal digits. */
function hex32(value: number): string {
  return `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
}

/** A little-endian 64-bit field as a number; throws past 2^53. */
function readUint64(bytes: Buffer, at: number, fail: (message: string) => never, field: string): number {
  const value = bytes.readBigUInt64LE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${field} is ${value}, past what this reader handles`);
  return Number(value);
}

/** Where the central directory lies and how many entries it has. */
interface Directory {
  offset: number;
  size: number;
  entries: number;
  /** The first byte after the central directory: the zip64 record or the end record. */
  end: number;
}

/** The end-of-central-directory record, last in the file, before a comment of up to 64 KiB. */
function findEndRecord(bytes: Buffer): number {
  const lowest = Math.max(0, bytes.length - EOCD_SIZE - MAX_COMMENT);
  for (let at = bytes.length - EOCD_SIZE; at >= lowest; at--) {
    if (bytes.readUInt32LE(at) === EOCD_SIGNATURE && at + EOCD_SIZE + bytes.readUInt16LE(at + 20) <= bytes.length) return at;
  }
  return -1;
}

/**
 * Reads the end records, zip64 ones included, of an archive of `bytes`. When a zip64 record
 * is there it is the one readers use (Python's zipfile does), so the classic record's fields
 * must agree with it wherever they are not the 0xFFFF... "see zip64" marks.
 */
function readDirectory(bytes: Buffer, fail: (message: string) => never): Directory {
  const end = bytes.length >= EOCD_SIZE ? findEndRecord(bytes) : -1;
  if (end < 0) fail(`the file is truncated or not a zip archive: no end-of-central-directory record in its ${bytes.length} bytes`);
  const classic = { entries: bytes.readUInt16LE(end + 10), size: bytes.readUInt32LE(end + 12), offset: bytes.readUInt32LE(end + 16) };
  if (bytes.readUInt16LE(end + 4) !== 0 || bytes.readUInt16LE(end + 6) !== 0 || bytes.readUInt16LE(end + 8) !== classic.entries) {
    fail('the end-of-central-directory record is damaged: its disk fields say the archive is split over several disks');
  }
  const locator = end - ZIP64_LOCATOR_SIZE;
  const hasZip64 = locator >= 0 && bytes.readUInt32LE(locator) === ZIP64_LOCATOR_SIGNATURE;
  const needsZip64 = classic.entries === 0xffff || classic.size === 0xffffffff || classic.offset === 0xffffffff;
  if (!hasZip64) {
    if (needsZip64) fail('the end-of-central-directory record asks for zip64 sizes but the zip64 locator is missing');
    return { ...classic, end };
  }
  if (bytes.readUInt32LE(locator + 4) !== 0 || bytes.readUInt32LE(locator + 16) !== 1) {
    fail('the zip64 locator is damaged: its disk fields say the archive is split over several disks');
  }
  const record = readUint64(bytes, locator + 8, fail, 'the zip64 end-of-central-directory offset');
  if (record + ZIP64_EOCD_SIZE > locator) {
    fail(`the zip64 end-of-central-directory record at byte ${record} lies past the zip64 locator at byte ${locator}`);
  }
  if (bytes.readUInt32LE(record) !== ZIP64_EOCD_SIGNATURE) fail(`no zip64 end-of-central-directory record at byte ${record}`);
  // Its size field counts the bytes after itself: the record must end at the locator.
  const recordSize = readUint64(bytes, record + 4, fail, 'the zip64 end-of-central-directory record size');
  if (record + 12 + recordSize !== locator) {
    fail(`the zip64 end-of-central-directory record is damaged: it says it has ${recordSize} more bytes, but the locator follows after ${locator - record - 12}`);
  }
  const zip64 = {
    entries: readUint64(bytes, record + 32, fail, 'the zip64 entry count'),
    size: readUint64(bytes, record + 40, fail, 'the zip64 central directory size'),
    offset: readUint64(bytes, record + 48, fail, 'the zip64 central directory offset'),
  };
  if (bytes.readUInt32LE(record + 16) !== 0 || bytes.readUInt32LE(record + 20) !== 0 ||
      readUint64(bytes, record + 24, fail, 'the zip64 entry count on this disk') !== zip64.entries) {
    fail('the zip64 end-of-central-directory record is damaged: its disk fields say the archive is split over several disks');
  }
  const marks = { entries: 0xffff, size: 0xffffffff, offset: 0xffffffff };
  for (const field of ['entries', 'size', 'offset'] as const) {
    if (classic[field] !== marks[field] && classic[field] !== zip64[field]) {
      fail(`the end records disagree: the central directory ${field} is ${classic[field]} in the classic record and ${zip64[field]} in the zip64 record`);
    }
  }
  return { ...zip64, end: record };
}

/** One central-directory entry, zip64 fields resolved. */
interface Entry {
  name: string;
  flags: number;
  method: number;
  crc: number;
  compressedSize: number;
  uncompressedSize: number;
  localOffset: number;
  /** Bytes this entry takes in the central directory. */
  length: number;
}

/** Reads the central-directory entry at `at`, resolving the zip64 extended-information extra field. */
function readEntry(bytes: Buffer, at: number, limit: number, index: number, fail: (message: string) => never): Entry {
  if (at + CENTRAL_SIZE > limit || bytes.readUInt32LE(at) !== CENTRAL_SIGNATURE) {
    fail(`central directory entry ${index} at byte ${at} is damaged: no central directory signature`);
  }
  const nameLength = bytes.readUInt16LE(at + 28);
  const extraLength = bytes.readUInt16LE(at + 30);
  const commentLength = bytes.readUInt16LE(at + 32);
  const length = CENTRAL_SIZE + nameLength + extraLength + commentLength;
  if (at + length > limit) fail(`central directory entry ${index} at byte ${at} runs past the central directory`);
  const name = bytes.toString('utf8', at + CENTRAL_SIZE, at + CENTRAL_SIZE + nameLength);
  // Python's zipfile reads up to version 6.3 and neither encrypted nor patched entries.
  const version = bytes.readUInt16LE(at + 6);
  if ((version & 0xff) > 63) fail(`entry '${name}' is damaged: it needs zip version ${Math.floor((version & 0xff) / 10)}.${(version & 0xff) % 10} to extract`);
  const entry: Entry = {
    name,
    flags: bytes.readUInt16LE(at + 8),
    method: bytes.readUInt16LE(at + 10),
    crc: bytes.readUInt32LE(at + 16),
    compressedSize: bytes.readUInt32LE(at + 20),
    uncompressedSize: bytes.readUInt32LE(at + 24),
    localOffset: bytes.readUInt32LE(at + 42),
    length,
  };
  const wide = (['uncompressedSize', 'compressedSize', 'localOffset'] as const).filter((field) => entry[field] === 0xffffffff);
  if (wide.length === 0) return entry;

  let extra = at + CENTRAL_SIZE + nameLength;
  const extraEnd = extra + extraLength;
  while (extra + 4 <= extraEnd) {
    const id = bytes.readUInt16LE(extra);
    const size = bytes.readUInt16LE(extra + 2);
    if (extra + 4 + size > extraEnd) break;
    if (id === ZIP64_EXTRA_ID) {
      if (size < wide.length * 8) fail(`entry '${name}' is damaged: its zip64 extra field has ${size} bytes, too few for ${wide.join(', ')}`);
      wide.forEach((field, i) => { entry[field] = readUint64(bytes, extra + 4 + i * 8, fail, `entry '${name}': zip64 ${field}`); });
      return entry;
    }
    extra += 4 + size;
  }
  return fail(`entry '${name}' is damaged: its sizes or offset need a zip64 extra field, and it has none`);
}

/** Checks the local header and data of `entry` and that the data's CRC-32 matches the recorded one. */
function verifyEntry(bytes: Buffer, entry: Entry, dataLimit: number, fail: (message: string) => never): Buffer {
  const where = `entry '${entry.name}'`;
  const at = entry.localOffset;
  if (at + LOCAL_SIZE > dataLimit) {
    fail(`${where}'s local header at byte ${at} lies past the end of the data (byte ${dataLimit}; the file has ${bytes.length} bytes)`);
  }
  if (bytes.readUInt32LE(at) !== LOCAL_SIGNATURE) fail(`${where} is damaged: no local header signature at byte ${at}`);
  if (entry.flags & 0x61) fail(`${where} is encrypted or patched (flags 0x${entry.flags.toString(16)}), which is not supported`);
  if (bytes.readUInt16LE(at + 6) !== entry.flags) {
    fail(`${where} is damaged: its local header has flags 0x${bytes.readUInt16LE(at + 6).toString(16)}, the central directory 0x${entry.flags.toString(16)}`);
  }
  const nameLength = bytes.readUInt16LE(at + 26);
  const localName = bytes.toString('utf8', at + LOCAL_SIZE, Math.min(at + LOCAL_SIZE + nameLength, bytes.length));
  if (localName !== entry.name) fail(`${where} is damaged: its local header names it '${localName}'`);
  const start = at + LOCAL_SIZE + nameLength + bytes.readUInt16LE(at + 28);
  const stop = start + entry.compressedSize;
  if (stop > dataLimit) {
    fail(stop > bytes.length
      ? `${where} ends at byte ${stop} but the file has ${bytes.length} bytes`
      : `${where} ends at byte ${stop}, inside the central directory that starts at byte ${dataLimit}`);
  }
  const data = bytes.subarray(start, stop);
  let content: Uint8Array;
  if (entry.method === 0) {
    if (entry.compressedSize !== entry.uncompressedSize) {
      fail(`${where} is damaged: it is stored uncompressed but records ${entry.compressedSize} stored bytes for ${entry.uncompressedSize} bytes of data`);
    }
    content = data;
  } else if (entry.method === 8) {
    let consumed: number;
    try {
      // Not zlib.inflateRawSync: see inflate.ts for the abort a terminated worker meets there.
      ({ output: content, consumed } = inflateRaw(data, entry.uncompressedSize));
    } catch (error) {
      return fail(`${where} is damaged: its deflated data does not inflate (${(error as Error).message})`);
    }
    // A deflate stream ends itself: one that ends before its recorded size has the wrong size.
    if (consumed !== data.length) fail(`${where} is damaged: its deflated data takes ${consumed} bytes but the archive records ${data.length}`);
    if (content.length !== entry.uncompressedSize) {
      fail(`${where} is damaged: it inflates to ${content.length} bytes but the archive records ${entry.uncompressedSize}`);
    }
  } else {
    return fail(`${where} uses compression method ${entry.method}; only stored (0) and deflate (8) are supported`);
  }
  const actual = crc32(content);
  if (actual !== entry.crc) fail(`${where} is damaged: its CRC-32 is ${hex32(actual)} but the archive records ${hex32(entry.crc)}`);
  return Buffer.from(content.buffer, content.byteOffset, content.byteLength);
}

/**
 * Checks that `bytes` is a whole zip archive: its end records (zip64 ones included), every
 * central-directory entry, each entry's local header and data inside the file, and the
 * CRC-32 of each entry's data (stored or deflated) against the central directory. Returns
 * each entry's content by name (stored entries as views of `bytes`).
 * Throws an Error whose message starts with `${what}: ` and names the damaged entry or
 * the truncation, e.g. `cannot load TorchScript model 'x.pt': entry 'x/data/3' is damaged: ...`.
 */
export function verifyZipArchive(bytes: Buffer, what: string): Map<string, Buffer> {
  const contents = new Map<string, Buffer>();
  const fail = (message: string): never => { throw new Error(`${what}: ${message}`); };
  const directory = readDirectory(bytes, fail);
  // Readers find the directory from the end records, so it must end exactly where they begin.
  if (directory.offset + directory.size !== directory.end) {
    fail(`the file is truncated or damaged: the central directory (bytes ${directory.offset} to ${directory.offset + directory.size}) ` +
      `does not end where the end records begin (byte ${directory.end})`);
  }
  let at = directory.offset;
  const limit = directory.offset + directory.size;
  for (let index = 0; index < directory.entries; index++) {
    const entry = readEntry(bytes, at, limit, index, fail);
    if (contents.has(entry.name)) fail(`the archive has two entries named '${entry.name}'`);
    contents.set(entry.name, verifyEntry(bytes, entry, directory.offset, fail));
    at += entry.length;
  }
  if (at !== limit) {
    fail(`the central directory is damaged: it records ${directory.entries} entries in ${directory.size} bytes, but they take ${at - directory.offset}`);
  }
  return contents;
}

/**
 * Reads the zip archive at `path` (a TorchScript file or a torch.save file) and checks it
 * with `verifyZipArchive` before LibTorch sees a byte of it. Errors start with `${what}: `.
 */
export function readArchive(path: string, what: string): { bytes: Buffer; entries: Map<string, Buffer> } {
  let bytes: Buffer;
  try {
    bytes = readRegularFile(path);
  } catch (error) {
    throw new Error(`${what}: ${(error as Error).message}`, { cause: error });
  }
  return { bytes, entries: verifyZipArchive(bytes, what) };
}
