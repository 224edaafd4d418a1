/**
 * Deterministic release of native memory: a scope disposes every tensor created inside
 * it except those it returns, like TensorFlow.js's `tidy`.
 *
 * Inside a scope, new tensors do not tell V8 how much native memory they hold (V8 answers
 * a large report with a full garbage collection, about 2 ms a training step, for memory the
 * scope frees anyway); a tensor that escapes every scope (returned from the outermost one,
 * or kept) reports it then, so that V8 still weighs what it holds.
 */
import { binding } from '../binding';

/** Anything that holds native memory and can give it back. */
export interface Disposable {
  dispose(): void;
  /** Called when it leaves every scope alive: it reports its memory to V8 then. */
  escape?(): void;
}

const scopes: Disposable[][] = [];

/** Records `value` in the innermost open scope, if any. */
export function track<T extends Disposable>(value: T): T {
  if (scopes.length > 0) scopes[scopes.length - 1].push(value);
  return value;
}

/**
 * Takes `value` out of every open scope: it lives until disposed explicitly (for state
 * that outlives a step, such as optimizer buffers). Returns it.
 */
export function keep<T extends Disposable>(value: T): T {
  for (const scope of scopes) {
    const index = scope.indexOf(value);
    if (index >= 0) scope.splice(index, 1);
  }
  value.escape?.();
  return value;
}

function open(): void {
  if (scopes.length === 0) binding.setMemoryReportsDeferred(true);
  scopes.push([]);
}

function close(): Disposable[] {
  const created = scopes.pop()!;
  if (scopes.length === 0) binding.setMemoryReportsDeferred(false);
  return created;
}

function collect(value: unknown, into: Set<unknown>, seen: Set<unknown>): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  into.add(value);
  if (Array.isArray(value)) {
    for (const item of value) collect(item, into, seen);
  } else if (value instanceof Map) {
    for (const item of value.values()) collect(item, into, seen);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const item of Object.values(value)) collect(item, into, seen);
  }
}

/**
 * Runs `fn` and disposes every tensor created while it ran, except those reachable from
 * its result (in arrays, plain objects and Maps), which move to the enclosing scope.
 */
export function tidy<T>(fn: () => T): T {
  open();
  let result: T;
  let created: Disposable[];
  try {
    result = fn();
  } catch (error) {
    created = close();
    for (const value of created) value.dispose();
    throw error;
  }
  created = close();
  if (result instanceof Promise) {
    for (const value of created) value.dispose();
    throw new Error('tidy() cannot keep tensors across an await: call dispose() on them instead');
  }
  const kept = new Set<unknown>();
  collect(result, kept, new Set());
  for (const value of created) {
    if (!kept.has(value)) value.dispose();
    else if (scopes.length > 0) track(value);
    else value.escape?.();
  }
  return result;
}
