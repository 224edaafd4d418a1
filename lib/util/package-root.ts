import * as fs from 'fs';
import * as path from 'path';

/** The folder of this package's package.json, from the compiled (dist/) or source (lib/) tree. */
export function packageRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`torch-early-exit: no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}
