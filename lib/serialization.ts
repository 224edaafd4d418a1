/**
 * `torch.save` and `torch.load` for dictionaries of tensors (state dicts), in the file
 * format Python's `torch.load` and `torch.save` use.
 */
import * as fs from 'fs';
import { binding } from './binding';
import { Tensor, fromNative, toNative } from './tensor';

/** A value `save` can write: tensors, numbers, strings, booleans, arrays, string-keyed dicts. */
export type Savable = Tensor | number | string | boolean | null | Savable[] | { [key: string]: Savable };

/** Writes `value` to `path` so that Python's `torch.load(path)` reads it. */
export function save(value: Savable, path: string): void {
  const bytes = binding.pickleSave(toNative(value));
  const temporary = `${path}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, bytes);
  fs.renameSync(temporary, path);
}

/**
 * Reads a file written by `save`, or by Python's `torch.save` of a plain dict of tensors
 * and values. LibTorch's unpickler reads less than Python's: from Python, save
 * `dict(module.state_dict())` (a state dict is an OrderedDict with metadata it cannot read).
 */
export function load(path: string): any {
  if (!fs.existsSync(path)) throw new Error(`torch.load: no such file '${path}'`);
  try {
    return fromNative(binding.pickleLoad(fs.readFileSync(path)));
  } catch (error) {
    throw new Error(`torch.load: cannot read '${path}': ${(error as Error).message}\n` +
      "LibTorch reads files of this library's torch.save, and Python torch.save files of plain dicts of tensors " +
      'and values: from Python, save dict(state_dict) rather than the OrderedDict state_dict() returns.');
  }
}
