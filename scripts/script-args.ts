/** Command-line pieces shared by the benchmark and soak scripts. */
import * as fs from 'fs';
import * as path from 'path';

/** `value` as a positive integer, or an error naming `flag`. */
export function positiveInt(flag: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${flag} needs a positive integer, got '${value}'`);
  return n;
}

/** The file name after --json. */
export function jsonFile(value: string | undefined): string {
  if (!value) throw new Error('--json needs a file name');
  // Made now, so that a long measurement does not end in ENOENT.
  fs.mkdirSync(path.dirname(path.resolve(value)), { recursive: true });
  return value;
}

/** The value after `name` in `args` (`--models a,b` gives 'a,b'), or undefined when `name` is absent. */
export function flagValue(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}
