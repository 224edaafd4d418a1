/**
 * Argument checks at the public surface: each names the argument, what it expected and
 * what it got, so that a wrong call fails on its first line rather than deep in LibTorch.
 */

/** A value as an error message shows it: short, and safe for symbols and cycles. */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'symbol') return value.toString();
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  const name = (value as object).constructor?.name;
  return name && name !== 'Object' ? `a ${name}` : 'an object';
}

function fail(name: string, expected: string, value: unknown): never {
  throw new TypeError(`${name} must be ${expected}, got ${describeValue(value)}`);
}

/** A string (non-empty when `nonEmpty`). */
export function checkString(value: unknown, name: string, nonEmpty = true): string {
  if (typeof value !== 'string' || (nonEmpty && value.length === 0)) fail(name, nonEmpty ? 'a non-empty string' : 'a string', value);
  return value as string;
}

/** A boolean. */
export function checkBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') fail(name, 'a boolean', value);
  return value as boolean;
}

/** A finite number. */
export function checkFinite(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(name, 'a finite number', value);
  return value as number;
}

/** An integer within [min, max] (safe integers by default). */
export function checkInteger(value: unknown, name: string, min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    const range = min === Number.MIN_SAFE_INTEGER && max === Number.MAX_SAFE_INTEGER ? 'an integer'
      : max === Number.MAX_SAFE_INTEGER ? `an integer of at least ${min}` : `an integer from ${min} to ${max}`;
    fail(name, range, value);
  }
  return value as number;
}

/** An options object (or undefined) whose keys are all among `allowed`. */
export function checkOptions(value: unknown, allowed: readonly string[], name: string): void {
  if (value === undefined) return;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail(name, 'an object', value);
  for (const key of Object.keys(value as object)) {
    if (!allowed.includes(key)) {
      throw new TypeError(`${name} has an unknown option '${key}'; the options are ${allowed.map((option) => `'${option}'`).join(', ')}`);
    }
  }
}
