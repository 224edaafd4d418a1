/**
 * The part of Python's pickle format that `torch.save` files use, both ways. Files this
 * library writes are what Python's `torch.save` writes for a dict of tensors (protocol 2,
 * tensors as `torch._utils._rebuild_tensor_v2` over storages named by persistent ids), so
 * that `torch.load(path)` reads them with its default `weights_only=True` (PyTorch ≥ 2.6)
 * and in PyTorch 1.13. Reading accepts what such files hold, `collections.OrderedDict` state
 * dicts with their `_metadata` included, and refuses any other global as `weights_only` does.
 */

/** A Python global or opcode the reader does not take, as torch.load with weights_only refuses it. */
export class UnsupportedPickle extends Error {}

/** What a storage of a torch.save file is: its dtype and its bytes, found by key. */
export interface StorageResolver {
  (key: string, dtype: string, numel: number): unknown;
}

/** Builds a tensor over a storage: (storage, offset, size, stride, requiresGrad). */
export type TensorBuilder = (storage: unknown, offset: number, size: number[], stride: number[], requiresGrad: boolean) => unknown;

/** The storage classes of torch.save files and the dtypes they hold. */
export const STORAGE_DTYPES: Record<string, string> = {
  FloatStorage: 'float32', DoubleStorage: 'float64', HalfStorage: 'float16', BFloat16Storage: 'bfloat16',
  LongStorage: 'int64', IntStorage: 'int32', ShortStorage: 'int16', CharStorage: 'int8', ByteStorage: 'uint8',
  BoolStorage: 'bool', UntypedStorage: 'uint8',
};

const MARK = Symbol('mark');

interface StorageType { storageDtype: string }

/** How `unpickle` reads. */
export interface UnpickleOptions {
  /**
   * Take any Python global (false: only those torch.load with weights_only takes). A global
   * it does not know becomes a function whose result is an opaque object, so that a pickle of
   * TorchScript objects (`__torch__.MyModel`) is walked for its tensors without running anything.
   */
  anyGlobal?: boolean;
}

/** An object of a Python class `unpickle` with `anyGlobal` does not know: its global and the arguments it was built with. */
export interface OpaqueObject { global: string; args: unknown[]; state?: unknown }

/**
 * Reads a pickle; persistent ids (`('storage', type, key, location, numel)`) go to `storage`,
 * `_rebuild_tensor_v2` (and, with `anyGlobal`, `_rebuild_qtensor`) to `tensor`. The pickle
 * must end with its STOP at the last byte, with one value on its stack: anything else is damage.
 */
export function unpickle(bytes: Buffer, storage: StorageResolver, tensor: TensorBuilder, options: UnpickleOptions = {}): unknown {
  const stack: unknown[] = [];
  const memo = new Map<number, unknown>();
  let at = 0;
  const need = (n: number) => { if (at + n > bytes.length) throw new Error(`the pickle ends early at byte ${at}`); };
  const u8 = () => { need(1); return bytes[at++]; };
  const u16 = () => { need(2); const v = bytes.readUInt16LE(at); at += 2; return v; };
  const u32 = () => { need(4); const v = bytes.readUInt32LE(at); at += 4; return v; };
  const text = (n: number) => { need(n); const v = bytes.toString('utf8', at, at + n); at += n; return v; };
  const line = () => { const end = bytes.indexOf(0x0a, at); if (end < 0) throw new Error('the pickle ends inside a GLOBAL'); const v = bytes.toString('latin1', at, end); at = end + 1; return v; };
  const popMark = (): unknown[] => {
    let index = stack.length - 1;
    while (index >= 0 && stack[index] !== MARK) index--;
    if (index < 0) throw new Error('the pickle has no MARK where one is needed');
    const items = stack.slice(index + 1);
    stack.length = index;
    return items;
  };
  const pop = () => { if (stack.length === 0) throw new Error('the pickle pops an empty stack'); return stack.pop(); };
  const top = () => { if (stack.length === 0) throw new Error('the pickle reads an empty stack'); return stack[stack.length - 1]; };
  const integer = (value: bigint): number | bigint => (value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value);
  const long = (n: number) => {
    need(n);
    let value = 0n;
    for (let i = n - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[at + i]);
    if (n > 0 && bytes[at + n - 1] & 0x80) value -= 1n << BigInt(8 * n);
    at += n;
    return integer(value);
  };
  const setItems = (target: unknown, items: unknown[]) => {
    if (target === null || typeof target !== 'object' || Array.isArray(target)) throw new Error('the pickle sets items on something that is not a dict');
    for (let i = 0; i + 1 < items.length; i += 2) (target as Record<string, unknown>)[String(items[i])] = items[i + 1];
  };
  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: need(8); at += 8; break; // FRAME
      case 0x2e: { // STOP
        const value = pop();
        if (at !== bytes.length) throw new Error(`the pickle stops at byte ${at - 1} of ${bytes.length}: ${bytes.length - at} bytes follow its end`);
        if (stack.length !== 0) throw new Error(`the pickle stops with ${stack.length + 1} values on its stack, not one`);
        return value;
      }
      case 0x28: stack.push(MARK); break; // MARK
      case 0x7d: stack.push({}); break; // EMPTY_DICT
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x29: stack.push([]); break; // EMPTY_TUPLE
      case 0x64: { const items = popMark(); const dict = {}; setItems(dict, items); stack.push(dict); break; } // DICT
      case 0x6c: case 0x74: stack.push(popMark()); break; // LIST, TUPLE
      case 0x85: stack.push([pop()]); break; // TUPLE1
      case 0x86: { const b = pop(); stack.push([pop(), b]); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); stack.push([pop(), b, c]); break; } // TUPLE3
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x4a: { need(4); stack.push(bytes.readInt32LE(at)); at += 4; break; } // BININT
      case 0x8a: stack.push(long(u8())); break; // LONG1
      case 0x8b: stack.push(long(u32())); break; // LONG4
      case 0x47: { need(8); stack.push(bytes.readDoubleBE(at)); at += 8; break; } // BINFLOAT
      case 0x58: stack.push(text(u32())); break; // BINUNICODE
      case 0x8c: stack.push(text(u8())); break; // SHORT_BINUNICODE
      case 0x54: stack.push(text(u32())); break; // BINSTRING
      case 0x55: stack.push(text(u8())); break; // SHORT_BINSTRING
      case 0x42: { const n = u32(); need(n); stack.push(Buffer.from(bytes.subarray(at, at + n))); at += n; break; } // BINBYTES
      case 0x43: { const n = u8(); need(n); stack.push(Buffer.from(bytes.subarray(at, at + n))); at += n; break; } // SHORT_BINBYTES
      case 0x71: memo.set(u8(), top()); break; // BINPUT
      case 0x72: memo.set(u32(), top()); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x68: case 0x6a: { // BINGET, LONG_BINGET
        const key = op === 0x68 ? u8() : u32();
        if (!memo.has(key)) throw new Error(`the pickle reads memo ${key}, which it never stored`);
        stack.push(memo.get(key));
        break;
      }
      case 0x63: { const module = line(); stack.push(global(module, line())); break; } // GLOBAL
      case 0x93: { const name = pop(); stack.push(global(String(pop()), String(name))); break; } // STACK_GLOBAL
      case 0x51: { // BINPERSID
        const id = pop() as unknown[];
        if (!Array.isArray(id) || id[0] !== 'storage' || !(id[1] as StorageType)?.storageDtype) throw new Error('the pickle names a persistent object that is not a storage');
        stack.push(storage(String(id[2]), (id[1] as StorageType).storageDtype, Number(id[4])));
        break;
      }
      case 0x52: case 0x81: { // REDUCE, NEWOBJ
        const args = pop();
        const callable = pop();
        if (typeof callable !== 'function' || !Array.isArray(args)) throw new Error('the pickle calls something that is not callable');
        stack.push(callable(...args));
        break;
      }
      case 0x62: { // BUILD: an OrderedDict's `_metadata` (module versions), which nothing here uses, or an object's state
        const state = pop();
        const target = top();
        if (options.anyGlobal && target && typeof target === 'object' && 'global' in target) (target as OpaqueObject).state = state;
        break;
      }
      case 0x61: { const value = pop(); (top() as unknown[]).push(value); break; } // APPEND
      case 0x65: { const items = popMark(); (top() as unknown[]).push(...items); break; } // APPENDS
      case 0x73: { const value = pop(); const key = pop(); setItems(top(), [key, value]); break; } // SETITEM
      case 0x75: { const items = popMark(); setItems(top(), items); break; } // SETITEMS
      default: throw new UnsupportedPickle(`pickle opcode 0x${op.toString(16)} at byte ${at - 1} is not one torch.save files use`);
    }
  }

  function global(module: string, name: string): unknown {
    const qualified = `${module}.${name}`;
    if (module === 'torch' && name in STORAGE_DTYPES) return { storageDtype: STORAGE_DTYPES[name] } satisfies StorageType;
    // Storages of dtypes torch.load here does not build (complex, quantized, float8, ...): their
    // class name, for a reader that only checks sizes.
    if (options.anyGlobal && module === 'torch' && /^\w+Storage$/.test(name)) return { storageDtype: `torch.${name}` } satisfies StorageType;
    switch (qualified) {
      case 'collections.OrderedDict': return () => ({});
      case 'torch._utils._rebuild_tensor_v2':
        return (data: unknown, offset: number, size: number[], stride: number[], requiresGrad: boolean) =>
          tensor(data, Number(offset), size.map(Number), stride.map(Number), Boolean(requiresGrad));
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        return (data: { requiresGrad: boolean }, requiresGrad: boolean) => { data.requiresGrad = Boolean(requiresGrad); return data; };
      // What LibTorch's own pickler (this library's torch.save before 0.2) wraps typed
      // containers and lists in.
      case 'torch.jit._pickle.restore_type_tag':
      case 'torch.jit._pickle.build_intlist':
      case 'torch.jit._pickle.build_doublelist':
      case 'torch.jit._pickle.build_boollist':
      case 'torch.jit._pickle.build_tensorlist':
      case 'torch.jit._pickle.build_genericlist':
        return (value: unknown) => value;
      case 'torch._utils._rebuild_qtensor':
        if (!options.anyGlobal) break;
        return (data: unknown, offset: number, size: number[], stride: number[], _quantizer: unknown, requiresGrad: boolean) =>
          tensor(data, Number(offset), size.map(Number), stride.map(Number), Boolean(requiresGrad));
      default: break;
    }
    if (!options.anyGlobal) throw new UnsupportedPickle(`the pickle needs the Python global ${qualified}, which torch.load with weights_only does not allow`);
    return (...args: unknown[]): OpaqueObject => ({ global: qualified, args });
  }
}

/** Writes pickles of dicts, lists, numbers, strings, booleans, None and tensors (protocol 2). */
export class PickleWriter {
  private readonly chunks: Buffer[] = [Buffer.from([0x80, 2])];

  private op(...bytes: number[]): void { this.chunks.push(Buffer.from(bytes)); }

  global(module: string, name: string): void { this.chunks.push(Buffer.from(`c${module}\n${name}\n`, 'latin1')); }

  mark(): void { this.op(0x28); }

  none(): void { this.op(0x4e); }

  bool(value: boolean): void { this.op(value ? 0x88 : 0x89); }

  int(value: number | bigint): void {
    const big = BigInt(value);
    if (big >= 0n && big < 256n) return this.op(0x4b, Number(big));
    if (big >= 0n && big < 65536n) { const b = Buffer.alloc(3); b[0] = 0x4d; b.writeUInt16LE(Number(big), 1); this.chunks.push(b); return; }
    if (big >= -(2n ** 31n) && big < 2n ** 31n) { const b = Buffer.alloc(5); b[0] = 0x4a; b.writeInt32LE(Number(big), 1); this.chunks.push(b); return; }
    // LONG1: little-endian two's complement, as short as the value allows.
    const bytes: number[] = [];
    let rest = big;
    for (;;) {
      bytes.push(Number(rest & 0xffn));
      rest >>= 8n;
      const sign = bytes[bytes.length - 1] & 0x80;
      if ((rest === 0n && !sign) || (rest === -1n && sign)) break;
    }
    this.op(0x8a, bytes.length, ...bytes);
  }

  float(value: number): void { const b = Buffer.alloc(9); b[0] = 0x47; b.writeDoubleBE(value, 1); this.chunks.push(b); }

  string(value: string): void {
    const text = Buffer.from(value, 'utf8');
    const head = Buffer.alloc(5);
    head[0] = 0x58;
    head.writeUInt32LE(text.length, 1);
    this.chunks.push(head, text);
  }

  tuple(write: () => void): void { this.mark(); write(); this.op(0x74); }

  /** A list: `write` writes the items. */
  list(count: number, write: () => void): void { this.op(0x5d); if (count > 0) { this.mark(); write(); this.op(0x65); } }

  /** A dict: `write` writes key, value, key, value... */
  dict(count: number, write: () => void): void { this.op(0x7d); if (count > 0) { this.mark(); write(); this.op(0x75); } }

  /** `callable(*args)`: the callable and the argument tuple are written by the two functions. */
  reduce(callable: () => void, args: () => void): void { callable(); this.tuple(args); this.op(0x52); }

  /** A persistent id (a storage): `write` writes the id tuple's items. */
  persistent(write: () => void): void { this.tuple(write); this.op(0x51); }

  /** The finished pickle. */
  finish(): Buffer { this.op(0x2e); return Buffer.concat(this.chunks); }
}
