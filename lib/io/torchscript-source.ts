/**
 * A check of the TorchScript code in an archive (`<folder>/code/**.py`) for what LibTorch's
 * importer crashes on instead of refusing. LibTorch 1.13's importer dereferences the missing
 * type of a class constant (`  name = value` in a class body, with no `: Final[T]`) and dies
 * with SIGSEGV; 2.6 and later refuse it with "Expected a type to present for class constant".
 * This refuses it the same way on every version, before the importer sees it.
 */

/** The class attributes the serializer writes without a type: lists the importer reads itself. */
const UNTYPED_ATTRIBUTES = new Set(['__parameters__', '__buffers__', '__forward_pre_hooks__', '__forward_hooks__']);

/** Throws, naming the file and line, for a class constant with no type in the code of `entries`. */
export function checkTorchScriptSource(entries: Map<string, Buffer>, what: string): void {
  for (const [name, bytes] of entries) {
    if (!/^[^/]+\/code\/.*\.py$/.test(name)) continue;
    const lines = bytes.toString('utf8').split('\n');
    // Enum classes list their values untyped (`  RED = 1`): the importer reads those apart.
    let inClass = false;
    lines.forEach((line, index) => {
      if (/^\S/.test(line)) inClass = /^class\s+\w+/.test(line) && !/\(\s*Enum\s*\)\s*:\s*$/.test(line);
      const constant = inClass ? /^ {2}([A-Za-z_]\w*) = /.exec(line) : null;
      if (constant && !UNTYPED_ATTRIBUTES.has(constant[1])) {
        throw new Error(`${what}: its TorchScript code is damaged: ${name.slice(name.indexOf('/') + 1)}, line ${index + 1}: ` +
          `the class constant '${constant[1]}' has no type (Expected a type to present for class constant)`);
      }
    });
  }
}
