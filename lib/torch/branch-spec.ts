/**
 * Exit branches written on a command line in PyTorch's own syntax:
 * `MaxPool2d(2, ceil_mode=True), Flatten(), Linear(784, 10)` is
 * `nn.Sequential(nn.MaxPool2d(2, { ceilMode: true }), nn.Flatten(), nn.Linear(784, 10))`.
 * Arguments follow each `torch.nn` constructor: its positional order and its keyword
 * names; values are numbers, `True`/`False`, `None`, tuples `(2, 2)` and quoted strings.
 */
import * as nn from '../torch/nn';

/** A layer's PyTorch signature (positional order and keyword names) and how to build it. */
interface Layer {
  params: string[];
  make: (...args: any[]) => nn.Module;
  /** Arguments PyTorch has that a branch cannot use, with the one value allowed. */
  fixed?: Record<string, unknown>;
}

const LAYERS: Record<string, Layer> = {
  Linear: { params: ['in_features', 'out_features', 'bias'], make: nn.Linear },
  Conv2d: {
    params: ['in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation', 'groups', 'bias', 'padding_mode'],
    make: nn.Conv2d,
  },
  BatchNorm1d: { params: ['num_features', 'eps', 'momentum', 'affine', 'track_running_stats'], make: nn.BatchNorm1d },
  BatchNorm2d: { params: ['num_features', 'eps', 'momentum', 'affine', 'track_running_stats'], make: nn.BatchNorm2d },
  ReLU: { params: ['inplace'], make: nn.ReLU },
  AvgPool2d: { params: ['kernel_size', 'stride', 'padding', 'ceil_mode', 'count_include_pad', 'divisor_override'], make: nn.AvgPool2d },
  MaxPool2d: {
    params: ['kernel_size', 'stride', 'padding', 'dilation', 'return_indices', 'ceil_mode'], make: nn.MaxPool2d,
    fixed: { return_indices: false },
  },
  AdaptiveAvgPool2d: { params: ['output_size'], make: nn.AdaptiveAvgPool2d },
  Flatten: { params: ['start_dim', 'end_dim'], make: nn.Flatten },
  Dropout: { params: ['p', 'inplace'], make: nn.Dropout },
  Identity: { params: [], make: nn.Identity },
  Tanh: { params: [], make: nn.Tanh },
  GELU: { params: ['approximate'], make: nn.GELU },
  LayerNorm: { params: ['normalized_shape', 'eps', 'elementwise_affine'], make: nn.LayerNorm },
  Select: { params: ['dim', 'index'], make: nn.Select },
};

const camel = (name: string) => name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** Reads the spec character by character; every error names the spec and where it stopped. */
class Reader {
  position = 0;
  constructor(readonly text: string) {}

  fail(what: string): never {
    throw new Error(`cannot read the branch spec '${this.text}' at '${this.text.slice(this.position)}': ${what}`);
  }

  skipSpaces(): void { while (/\s/.test(this.text[this.position] ?? '')) this.position++; }

  take(char: string): boolean {
    this.skipSpaces();
    if (this.text[this.position] !== char) return false;
    this.position++;
    return true;
  }

  expect(char: string, what: string): void { if (!this.take(char)) this.fail(`expected ${what}`); }

  name(): string | undefined {
    this.skipSpaces();
    const match = /^[A-Za-z_][A-Za-z0-9_]*/.exec(this.text.slice(this.position));
    if (!match) return undefined;
    this.position += match[0].length;
    return match[0];
  }

  value(): unknown {
    this.skipSpaces();
    if (this.take('(')) {
      const items: unknown[] = [];
      while (!this.take(')')) {
        items.push(this.value());
        if (!this.take(',')) { this.expect(')', "',' or ')' in a tuple"); break; }
      }
      return items;
    }
    const rest = this.text.slice(this.position);
    const literal = /^(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|True|False|true|false|None|null|'[^']*'|"[^"]*")/.exec(rest);
    if (!literal) this.fail('expected a number, True, False, None, a tuple or a quoted string');
    this.position += literal[0].length;
    const text = literal[0];
    if (text === 'True' || text === 'true') return true;
    if (text === 'False' || text === 'false') return false;
    if (text === 'None' || text === 'null') return null;
    if (text.startsWith("'") || text.startsWith('"')) return text.slice(1, -1);
    return Number(text);
  }

  atEnd(): boolean {
    this.skipSpaces();
    return this.position >= this.text.length;
  }
}

function readLayer(reader: Reader, spec: string): nn.Module {
  const name = reader.name();
  if (name === undefined) reader.fail('expected a layer such as Linear(784, 10)');
  const layer = LAYERS[name];
  if (!layer) throw new Error(`unknown layer '${name}' in '${spec}' (layers: ${Object.keys(LAYERS).join(', ')})`);
  reader.expect('(', `'(' after ${name}`);
  const args: Record<string, unknown> = {};
  let positional = 0;
  while (!reader.take(')')) {
    const start = reader.position;
    const keyword = reader.name();
    if (keyword !== undefined && reader.take('=')) {
      if (!layer.params.includes(keyword)) {
        throw new Error(`${name} has no argument '${keyword}' (PyTorch's arguments: ${layer.params.join(', ') || 'none'}) in '${spec}'`);
      }
      if (keyword in args) throw new Error(`${name} got '${keyword}' twice in '${spec}'`);
      args[keyword] = reader.value();
    } else {
      reader.position = start;
      if (Object.keys(args).length > positional) reader.fail(`a positional argument of ${name} after a keyword argument`);
      if (positional >= layer.params.length) {
        throw new Error(`${name} takes at most ${layer.params.length} positional argument(s) (${layer.params.join(', ')}) in '${spec}'`);
      }
      args[layer.params[positional++]] = reader.value();
    }
    if (!reader.take(',')) { reader.expect(')', `',' or ')' in the arguments of ${name}`); break; }
  }
  const options: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(args)) {
    if (layer.fixed && key in layer.fixed) {
      if (value !== layer.fixed[key]) throw new Error(`${name}(${key}=${String(value)}) is not supported in an exit branch, which needs one Tensor out`);
      continue;
    }
    // None means "PyTorch's default" for the arguments that take it (stride, divisor_override).
    if (value !== null || key === 'momentum') options[camel(key)] = value;
  }
  try {
    return layer.make(options);
  } catch (error) {
    throw new Error(`${name} in '${spec}': ${(error as Error).message}`);
  }
}

/** Builds the branch a spec describes; the error names the part it cannot read. */
export function parseBranchSpec(spec: string): nn.Module {
  const reader = new Reader(spec);
  const layers: nn.Module[] = [];
  while (!reader.atEnd()) {
    layers.push(readLayer(reader, spec));
    if (!reader.atEnd()) reader.expect(',', "',' between layers");
  }
  if (layers.length === 0) throw new Error('an exit branch spec needs at least one layer');
  return layers.length === 1 ? layers[0] : nn.Sequential(...layers);
}
