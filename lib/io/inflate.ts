/**
 * Raw DEFLATE (RFC 1951) decoding in plain JavaScript, after Mark Adler's puff.c: the
 * deflated entries of model archives (PyTorch compresses their code and debug pickles) are
 * inflated here rather than by Node's zlib. A zlib handle is a native object with its own
 * lifecycle: a worker thread terminated between its creation and its init aborts the whole
 * process when the worker's environment closes it (Node's `CHECK(init_done_ && "close before
 * init")` in node_zlib.cc; 1 `jit.load` in about 1,000 terminated workers, `npm run soak:load`).
 * Plain code has nothing to close. The entries are small (kilobytes), so the bit-at-a-time
 * Huffman decoding costs little; the output is capped at the size the archive records, so a
 * damaged or hostile stream cannot grow without end.
 */

/** Base lengths and extra bits of length codes 257..285, and of distance codes 0..29. */
const LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DISTANCE_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
  8193, 12289, 16385, 24577];
const DISTANCE_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
/** The order in which a dynamic block gives the code lengths of the code-length code. */
const CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
const MAX_BITS = 15;

/** A canonical Huffman code: how many codes of each length, and the symbols in code order. */
interface Huffman { count: Uint16Array; symbol: Uint16Array }

function huffman(lengths: ArrayLike<number>, fail: (message: string) => never): Huffman {
  const count = new Uint16Array(MAX_BITS + 1);
  for (let i = 0; i < lengths.length; i++) count[lengths[i]]++;
  let left = 1;
  for (let length = 1; length <= MAX_BITS; length++) {
    left = left * 2 - count[length];
    if (left < 0) fail('a Huffman code is over-subscribed');
  }
  const offsets = new Uint16Array(MAX_BITS + 2);
  for (let length = 1; length <= MAX_BITS; length++) offsets[length + 1] = offsets[length] + count[length];
  const symbol = new Uint16Array(lengths.length);
  for (let i = 0; i < lengths.length; i++) if (lengths[i] !== 0) symbol[offsets[lengths[i]]++] = i;
  return { count, symbol };
}

let fixedCodes: { lengths: Huffman; distances: Huffman } | undefined;

/**
 * The data of the raw deflate stream at the start of `input`, and how many bytes of `input`
 * it took. Throws an Error saying what is wrong for a damaged stream, or one whose data
 * would exceed `maxOutput` bytes.
 */
export function inflateRaw(input: Uint8Array, maxOutput: number): { output: Buffer; consumed: number } {
  const fail = (message: string): never => { throw new Error(message); };
  let position = 0;
  let bitBuffer = 0;
  let bitCount = 0;
  let output = Buffer.alloc(Math.max(64, Math.min(maxOutput, input.length * 4)));
  let length = 0;

  const bits = (need: number): number => {
    while (bitCount < need) {
      if (position >= input.length) fail('the deflated data ends in the middle of a block');
      bitBuffer |= input[position++] << bitCount;
      bitCount += 8;
    }
    const value = bitBuffer & ((1 << need) - 1);
    bitBuffer >>>= need;
    bitCount -= need;
    return value;
  };
  const room = (more: number) => {
    if (length + more > maxOutput) fail(`the deflated data inflates past ${maxOutput} bytes, the size the archive records`);
    if (length + more > output.length) {
      const grown = Buffer.alloc(Math.min(maxOutput, Math.max(output.length * 2, length + more)));
      output.copy(grown, 0, 0, length);
      output = grown;
    }
  };
  const decode = (code: Huffman): number => {
    let value = 0;
    let first = 0;
    let index = 0;
    for (let bitLength = 1; bitLength <= MAX_BITS; bitLength++) {
      value |= bits(1);
      const count = code.count[bitLength];
      if (value - count < first) return code.symbol[index + (value - first)];
      index += count;
      first = (first + count) << 1;
      value <<= 1;
    }
    return fail('the deflated data holds a code its Huffman table does not have');
  };
  const stored = () => {
    bitBuffer = 0;
    bitCount = 0;
    if (position + 4 > input.length) fail('the deflated data ends in a stored block\'s header');
    const size = input[position] | (input[position + 1] << 8);
    const check = input[position + 2] | (input[position + 3] << 8);
    if (size !== (~check & 0xffff)) fail('a stored block\'s length does not match its complement');
    position += 4;
    if (position + size > input.length) fail('the deflated data ends in the middle of a stored block');
    room(size);
    output.set(input.subarray(position, position + size), length);
    length += size;
    position += size;
  };
  const codes = (lengths: Huffman, distances: Huffman) => {
    for (;;) {
      const symbol = decode(lengths);
      if (symbol < 256) {
        room(1);
        output[length++] = symbol;
      } else if (symbol === 256) {
        return;
      } else {
        const index = symbol - 257;
        if (index >= 29) fail(`the deflated data holds the invalid length code ${symbol}`);
        const size = LENGTH_BASE[index] + bits(LENGTH_EXTRA[index]);
        const distanceCode = decode(distances);
        if (distanceCode >= 30) fail(`the deflated data holds the invalid distance code ${distanceCode}`);
        const distance = DISTANCE_BASE[distanceCode] + bits(DISTANCE_EXTRA[distanceCode]);
        if (distance > length) fail(`the deflated data refers ${distance} bytes back, before its start`);
        room(size);
        for (let i = 0; i < size; i++, length++) output[length] = output[length - distance];
      }
    }
  };
  const dynamic = () => {
    const literalCount = bits(5) + 257;
    const distanceCount = bits(5) + 1;
    const codeLengthCount = bits(4) + 4;
    if (literalCount > 286 || distanceCount > 30) fail('a dynamic block has too many codes');
    const codeLengths = new Uint8Array(19);
    for (let i = 0; i < codeLengthCount; i++) codeLengths[CODE_LENGTH_ORDER[i]] = bits(3);
    const codeLengthCode = huffman(codeLengths, fail);
    const lengths = new Uint8Array(literalCount + distanceCount);
    for (let i = 0; i < lengths.length;) {
      const symbol = decode(codeLengthCode);
      if (symbol < 16) { lengths[i++] = symbol; continue; }
      let repeat: number;
      let value = 0;
      if (symbol === 16) {
        if (i === 0) fail('a dynamic block repeats a code length before the first');
        value = lengths[i - 1];
        repeat = 3 + bits(2);
      } else {
        repeat = symbol === 17 ? 3 + bits(3) : 11 + bits(7);
      }
      if (i + repeat > lengths.length) fail('a dynamic block gives more code lengths than it has codes');
      lengths.fill(value, i, i + repeat);
      i += repeat;
    }
    if (lengths[256] === 0) fail('a dynamic block has no end-of-block code');
    codes(huffman(lengths.subarray(0, literalCount), fail), huffman(lengths.subarray(literalCount), fail));
  };

  let last = 0;
  while (!last) {
    last = bits(1);
    const type = bits(2);
    if (type === 0) stored();
    else if (type === 1) {
      if (!fixedCodes) {
        const lengths = new Uint8Array(288);
        lengths.fill(8, 0, 144); lengths.fill(9, 144, 256); lengths.fill(7, 256, 280); lengths.fill(8, 280, 288);
        fixedCodes = { lengths: huffman(lengths, fail), distances: huffman(new Uint8Array(30).fill(5), fail) };
      }
      codes(fixedCodes.lengths, fixedCodes.distances);
    } else if (type === 2) dynamic();
    else fail('the deflated data has a block of the invalid type 3');
  }
  return { output: output.subarray(0, length), consumed: position };
}
