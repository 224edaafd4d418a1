/**
 * ASCII's A–Z to a–z, nothing else: what Python's `str.translate` with an ASCII table does
 * (scripts/spam_text.py), so that the corpus and the tokenizer lower text alike on both sides.
 * `toLowerCase` would also change letters beyond ASCII, and some of them into two characters.
 */
export function asciiLower(text: string): string {
  return text.replace(/[A-Z]+/g, (run) => run.toLowerCase());
}
