/**
 * Exit branches written on a command line: `MaxPool2d(2),Flatten(),Linear(784,10)` is
 * `nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))`.
 */
import * as nn from '../nn';

const LAYERS: Record<string, (...args: any[]) => nn.Module> = {
  Linear: nn.Linear, Conv2d: nn.Conv2d, BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d, ReLU: nn.ReLU,
  AvgPool2d: nn.AvgPool2d, MaxPool2d: nn.MaxPool2d, AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d, Flatten: nn.Flatten,
  Dropout: nn.Dropout, Identity: nn.Identity,
};

function parseValue(text: string, layer: string): unknown {
  const value = text.trim();
  if (value === 'true' || value === 'false') return value === 'true';
  if (value === 'null') return null;
  if (/^-?\d+(\.\d+)?(e-?\d+)?$/.test(value)) return Number(value);
  throw new Error(`${layer}: cannot read argument '${value}' (numbers, true, false and null are allowed)`);
}

/** Builds the branch a spec describes; the error names the part it cannot read. */
export function parseBranchSpec(spec: string): nn.Module {
  const layers: nn.Module[] = [];
  const pattern = /\s*([A-Za-z0-9]+)\s*\(([^)]*)\)\s*(,|$)/y;
  let position = 0;
  while (position < spec.length) {
    pattern.lastIndex = position;
    const match = pattern.exec(spec);
    if (!match) throw new Error(`cannot read the branch spec '${spec}' at '${spec.slice(position)}': expected Layer(args), ...`);
    const [, name, body] = match;
    const make = LAYERS[name];
    if (!make) throw new Error(`unknown layer '${name}' in '${spec}' (layers: ${Object.keys(LAYERS).join(', ')})`);
    const args = body.trim() === '' ? [] : body.split(',').map((part) => parseValue(part, name));
    layers.push(make(...args));
    position = pattern.lastIndex;
  }
  if (layers.length === 0) throw new Error('an exit branch spec needs at least one layer');
  return layers.length === 1 ? layers[0] : nn.Sequential(...layers);
}
