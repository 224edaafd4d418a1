/**
 * A word tokenizer that gives the same ids in Node and in Python (scripts/spam_text.py), so
 * that a model trained in PyTorch reads in Node exactly the ids it was trained on. Its rules
 * are few on purpose, each one the same in both languages:
 *  - letters A–Z are lowered to a–z, and nothing else changes (Python's and JavaScript's
 *    Unicode case mappings differ, ASCII's do not);
 *  - a token is a run of [a-z0-9], or one of `$ ! %` (strong signals in spam) alone;
 *    everything else separates tokens;
 *  - ids: [PAD] 0, [UNK] 1, [CLS] 2, then the vocabulary's words; a sequence is [CLS] and its
 *    tokens, cut at `maxLength`, and a batch is padded with [PAD] to its longest sequence.
 * The vocabulary is built from training texts only: the words seen at least `minCount` times,
 * most frequent first (ties in code-point order), up to `size` ids in all.
 */
import { writeFileAtomic } from '../io/atomic-write';
import { readRegularFile } from '../io/regular-file';
import { Tensor } from '../torch/tensor';
import { tensor } from '../torch/torch';
import { asciiLower } from '../util/ascii';
import { checkInteger, checkOptions } from '../util/check';

const SPECIALS = ['[PAD]', '[UNK]', '[CLS]'] as const;
const TOKEN = /[a-z0-9]+|[$!%]/g;
const KIND = 'torch-early-exit word tokenizer';

/** What `save` writes and `load` reads (Python writes the same). */
export interface TokenizerFile {
  kind: typeof KIND;
  version: 1;
  maxLength: number;
  vocabulary: string[];
}

export interface BuildOptions {
  /** Ids in all, the three special ones included (default 8192). */
  size?: number;
  /** Words seen fewer times are [UNK] (default 2). */
  minCount?: number;
  /** The longest sequence, [CLS] included (default 128). */
  maxLength?: number;
}

/** A batch as a transformer reads it. */
export interface EncodedBatch {
  /** int64 [N, L]: each sequence's ids, padded with [PAD] (0) to the longest. */
  inputIds: Tensor;
  /** int64 [N, L]: 1 for a token, 0 for padding (Hugging Face's attention_mask). */
  attentionMask: Tensor;
}

export class WordTokenizer {
  static readonly PAD = 0;
  static readonly UNK = 1;
  static readonly CLS = 2;

  private readonly ids: Map<string, number>;

  private constructor(readonly vocabulary: readonly string[], readonly maxLength: number) {
    this.ids = new Map(vocabulary.map((word, id) => [word, id]));
  }

  /** The tokens of `text`, before they become ids. */
  static tokenize(text: string): string[] {
    return asciiLower(text).match(TOKEN) ?? [];
  }

  /** A vocabulary from `texts` (training texts only: the held-out ones would leak into it). */
  static build(texts: Iterable<string>, options: BuildOptions = {}): WordTokenizer {
    checkOptions(options, ['size', 'minCount', 'maxLength'], 'WordTokenizer.build: options');
    const size = checkInteger(options.size ?? 8192, 'WordTokenizer.build: options.size', SPECIALS.length + 1);
    const minCount = checkInteger(options.minCount ?? 2, 'WordTokenizer.build: options.minCount', 1);
    const maxLength = checkInteger(options.maxLength ?? 128, 'WordTokenizer.build: options.maxLength', 2);
    const counts = new Map<string, number>();
    for (const text of texts) {
      for (const token of WordTokenizer.tokenize(text)) counts.set(token, (counts.get(token) ?? 0) + 1);
    }
    const words = [...counts].filter(([, count]) => count >= minCount)
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .slice(0, size - SPECIALS.length).map(([word]) => word);
    return new WordTokenizer([...SPECIALS, ...words], maxLength);
  }

  /** Reads a tokenizer that `save` or scripts/spam_text.py wrote; refuses anything else, saying why. */
  static load(file: string): WordTokenizer {
    const what = `cannot load tokenizer '${file}'`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(readRegularFile(file, 64 * 1024 * 1024).toString('utf8'));
    } catch (error) {
      throw new Error(`${what}: ${(error as Error).message}`);
    }
    const record = parsed as Partial<TokenizerFile>;
    if (record === null || typeof record !== 'object' || record.kind !== KIND) throw new Error(`${what}: not a file of kind '${KIND}'`);
    if (record.version !== 1) throw new Error(`${what}: version ${JSON.stringify(record.version)}, and this library reads version 1`);
    if (!Number.isInteger(record.maxLength) || (record.maxLength as number) < 2) throw new Error(`${what}: maxLength is ${JSON.stringify(record.maxLength)}, not an integer of at least 2`);
    const vocabulary = record.vocabulary;
    if (!Array.isArray(vocabulary) || !vocabulary.every((word) => typeof word === 'string')) throw new Error(`${what}: vocabulary is not a list of strings`);
    SPECIALS.forEach((special, id) => {
      if (vocabulary[id] !== special) throw new Error(`${what}: id ${id} must be ${special}, and is ${JSON.stringify(vocabulary[id])}`);
    });
    if (new Set(vocabulary).size !== vocabulary.length) throw new Error(`${what}: the vocabulary holds a word twice`);
    return new WordTokenizer(vocabulary, record.maxLength as number);
  }

  /** Writes the tokenizer as JSON (atomically: a failed write leaves the previous file whole). */
  save(file: string): void {
    const record: TokenizerFile = { kind: KIND, version: 1, maxLength: this.maxLength, vocabulary: [...this.vocabulary] };
    writeFileAtomic(file, JSON.stringify(record) + '\n', 'WordTokenizer.save');
  }

  /** [CLS] and the ids of the text's tokens ([UNK] for words not in the vocabulary), cut at maxLength. */
  encode(text: string): number[] {
    const ids = [WordTokenizer.CLS];
    for (const token of WordTokenizer.tokenize(text)) {
      if (ids.length >= this.maxLength) break;
      ids.push(this.ids.get(token) ?? WordTokenizer.UNK);
    }
    return ids;
  }

  /** Texts as one batch, padded to the longest. */
  encodeBatch(texts: readonly string[]): EncodedBatch {
    if (!Array.isArray(texts) || texts.length === 0) throw new TypeError('WordTokenizer.encodeBatch: texts must be a non-empty array of strings');
    const sequences = texts.map((text, i) => {
      if (typeof text !== 'string') throw new TypeError(`WordTokenizer.encodeBatch: texts[${i}] is not a string`);
      return this.encode(text);
    });
    const length = Math.max(...sequences.map((ids) => ids.length));
    const ids = new BigInt64Array(texts.length * length);
    const mask = new BigInt64Array(texts.length * length);
    sequences.forEach((sequence, i) => sequence.forEach((id, j) => {
      ids[i * length + j] = BigInt(id);
      mask[i * length + j] = 1n;
    }));
    return { inputIds: tensor(ids, { shape: [texts.length, length] }), attentionMask: tensor(mask, { shape: [texts.length, length] }) };
  }

  /** How many ids there are. */
  get size(): number { return this.vocabulary.length; }
}
