/**
 * Zip archives as PyTorch writes them for `torch.save`: every entry stored uncompressed,
 * its data aligned to 64 bytes by a padding extra field (the "FB" field PyTorch's writer
 * uses), so that readers may map the storages straight from the file.
 */
import { crc32 } from './zip-integrity';

const ALIGNMENT = 64;
const LOCAL_SIZE = 30;
const CENTRAL_SIZE = 46;
const PADDING_ID = 0x4246; // 'FB'
const DOS_DATE = (1 << 5) | 1; // 1980-01-01, as PyTorch writes every entry

/** The bytes of a zip archive holding `entries` in order; throws past the 4 GiB of a zip without zip64. */
export function zipStored(entries: ReadonlyArray<readonly [string, Buffer]>, what: string): Buffer {
  const chunks: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of entries) {
    const nameBytes = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    // Pad with an extra field so that the data starts on a multiple of ALIGNMENT.
    const padding = (ALIGNMENT - ((offset + LOCAL_SIZE + nameBytes.length + 4) % ALIGNMENT)) % ALIGNMENT;
    const extra = Buffer.alloc(4 + padding);
    extra.writeUInt16LE(PADDING_ID, 0);
    extra.writeUInt16LE(padding, 2);
    const local = Buffer.alloc(LOCAL_SIZE);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(DOS_DATE, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    local.writeUInt16LE(extra.length, 28);
    const entry = Buffer.alloc(CENTRAL_SIZE);
    entry.writeUInt32LE(0x02014b50, 0);
    entry.writeUInt16LE(20, 4);
    entry.writeUInt16LE(20, 6);
    entry.writeUInt16LE(DOS_DATE, 14);
    entry.writeUInt32LE(crc, 16);
    entry.writeUInt32LE(data.length, 20);
    entry.writeUInt32LE(data.length, 24);
    entry.writeUInt16LE(nameBytes.length, 28);
    entry.writeUInt32LE(offset, 42);
    central.push(entry, nameBytes);
    chunks.push(local, nameBytes, extra, data);
    offset += LOCAL_SIZE + nameBytes.length + extra.length + data.length;
    if (offset > 0xffffffff || entries.length > 0xffff) throw new Error(`${what}: archives over 4 GiB or 65,535 entries are not supported`);
  }
  const directory = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  if (offset + directory.length > 0xffffffff) throw new Error(`${what}: archives over 4 GiB are not supported`);
  return Buffer.concat([...chunks, directory, end]);
}
