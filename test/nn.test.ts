import { Tensor, nn, torch } from '../lib';
import { RefTensor, fromRef, maxAbsDiff, python } from './helpers';

/*
 * Deterministic values that Python computes identically: integer arithmetic, then one
 * correctly rounded double division, then rounding to float32.
 */
function fanIn(shape: number[]): number {
  return shape.length > 1 ? shape.slice(1).reduce((a, b) => a * b, 1) : 1;
}
function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
/** Weights in ±1/fanIn. */
function pattern(shape: number[], seed: number): Tensor {
  const scale = 50 * fanIn(shape);
  return torch.tensor(Float32Array.from({ length: numel(shape) }, (_, k) => ((k * 37 + seed * 11) % 101 - 50) / scale), { shape });
}
/** Inputs in ±2. */
function input(shape: number[], seed: number): Tensor {
  return torch.tensor(Float32Array.from({ length: numel(shape) }, (_, k) => ((k * 13 + seed * 7) % 29 - 14) / 7), { shape });
}
/** Loads pattern values into every parameter and buffer (positive variances, 3 batches tracked). */
function loadPattern(module: nn.Module): void {
  const state: Record<string, Tensor> = {};
  Object.entries(module.stateDict()).forEach(([name, t], i) => {
    if (name.endsWith('num_batches_tracked')) state[name] = torch.tensor(3);
    else if (name.endsWith('running_var')) {
      state[name] = torch.tensor(Float32Array.from({ length: t.numel() }, (_, k) => 0.5 + ((k * 7) % 11) / 10), { shape: t.shape });
    } else state[name] = pattern(t.shape, i);
  });
  module.loadStateDict(state);
}

const PY_HELPERS = `
import json, math, torch, torch.nn as nn
def pattern(shape, seed):
    fan = math.prod(shape[1:]) if len(shape) > 1 else 1
    n = math.prod(shape)
    return torch.tensor([((k * 37 + seed * 11) % 101 - 50) / (50 * fan) for k in range(n)], dtype=torch.float32).reshape(shape)
def inp(shape, seed):
    return torch.tensor([((k * 13 + seed * 7) % 29 - 14) / 7 for k in range(math.prod(shape))], dtype=torch.float32).reshape(shape)
def load_pattern(m):
    new = {}
    for i, (name, t) in enumerate(m.state_dict().items()):
        if name.endswith('num_batches_tracked'): new[name] = torch.tensor(3)
        elif name.endswith('running_var'): new[name] = torch.tensor([0.5 + ((k * 7) % 11) / 10 for k in range(t.numel())], dtype=torch.float32).reshape(t.shape)
        else: new[name] = pattern(list(t.shape), i)
    m.load_state_dict(new)
def ref(t):
    t = t.detach()
    return {'shape': list(t.shape), 'dtype': 'int64' if t.dtype == torch.int64 else 'float32', 'data': t.flatten().tolist()}
`;

const PY_CASES = `${PY_HELPERS}
out = {}
a = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
out['branchParams'] = [n for n, _ in a.named_parameters()]
load_pattern(a)
out['branch'] = ref(a(inp([2, 64, 15, 15], 1)))

b = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
                  nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(), nn.Dropout(0.3), nn.Linear(24, 5), nn.BatchNorm1d(5))
out['evalKeys'] = list(b.state_dict().keys())
load_pattern(b)
b.eval()
out['evalOut'] = ref(b(inp([2, 3, 10, 10], 2)))

c = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 6), nn.BatchNorm1d(6, momentum=None))
load_pattern(c)
c.train()
c(inp([4, 3, 10, 10], 3))
y = c(inp([4, 3, 10, 10], 4))
y.pow(2).sum().backward()
out['trainOut'] = ref(y)
out['trainState'] = {k: ref(v) for k, v in c.state_dict().items()}
out['trainGrads'] = {k: ref(p.grad) for k, p in c.named_parameters()}

for mode in ['zeros', 'reflect', 'replicate', 'circular']:
    m = nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode=mode)
    load_pattern(m)
    out['pad_' + mode] = ref(m(inp([1, 2, 5, 6], 5)))

x = inp([1, 2, 7, 7], 6)
out['avgCeil'] = ref(nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)(x))
out['avgCountPad'] = ref(nn.AvgPool2d(3, stride=2, padding=1)(x))
out['avgDivisor'] = ref(nn.AvgPool2d(2, divisor_override=3)(x))
out['maxDilated'] = ref(nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True)(x))
out['adaptive'] = ref(nn.AdaptiveAvgPool2d((3, 2))(x))

class Cls(nn.Module):
    def forward(self, x):
        return x[:, 0]
ramp = nn.Sequential(Cls(), nn.LayerNorm(8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
load_pattern(ramp)
seq = inp([2, 5, 8], 7)
out['rampKeys'] = list(ramp.state_dict().keys())
y = ramp(seq)
y.pow(2).sum().backward()
out['ramp'] = ref(y)
out['rampGrads'] = {k: ref(p.grad) for k, p in ramp.named_parameters()}
out['gelu'] = ref(nn.GELU()(seq))
out['geluTanh'] = ref(nn.GELU(approximate='tanh')(seq))
ln = nn.LayerNorm([5, 8], eps=1e-3)
load_pattern(ln)
out['layerNorm2'] = ref(ln(seq))
out['layerNormPlain'] = ref(nn.LayerNorm(8, elementwise_affine=False)(seq))
emb = nn.Embedding(10, 4, padding_idx=0)
load_pattern(emb)
ids = torch.tensor([[0, 3, 9], [2, 0, 3]])
e = emb(ids)
e.pow(2).sum().backward()
out['embedding'] = ref(e)
out['embeddingGrad'] = ref(emb.weight.grad)

n = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.BatchNorm1d(2))
out['nestedModules'] = [k for k, _ in n.named_modules()]
out['nestedParams'] = [k for k, _ in n.named_parameters()]
out['nestedBuffers'] = [k for k, _ in n.named_buffers()]
out['nestedState'] = list(n.state_dict().keys())
print(json.dumps(out))
`;

interface PyOut {
  branchParams: string[];
  branch: RefTensor;
  evalKeys: string[];
  evalOut: RefTensor;
  trainOut: RefTensor;
  trainState: Record<string, RefTensor>;
  trainGrads: Record<string, RefTensor>;
  [key: string]: unknown;
  nestedModules: string[];
  nestedParams: string[];
  nestedBuffers: string[];
  nestedState: string[];
}

function absMax(t: Tensor | RefTensor): number {
  const data = t instanceof Tensor ? Array.from(t.data() as ArrayLike<number>, Number) : t.data;
  return Math.max(...data.map(Math.abs));
}

function values(t: Tensor): number[] {
  return Array.from(t.data() as ArrayLike<number>, Number);
}

/** Plain conv2d with zero padding, in doubles, for NCHW input and OIHW weights. */
function naiveConv2d(x: Tensor, w: Tensor, b: Tensor | null,
  stride: [number, number], padding: [number, number], dilation: [number, number], groups: number): { shape: number[]; data: number[] } {
  const [n, c, h, wd] = x.shape;
  const [o, cg, kh, kw] = w.shape;
  const xv = values(x);
  const wv = values(w);
  const bv = b ? values(b) : null;
  const oh = Math.floor((h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) / stride[0]) + 1;
  const ow = Math.floor((wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) / stride[1]) + 1;
  const og = o / groups;
  const data: number[] = [];
  for (let ni = 0; ni < n; ni++) {
    for (let oc = 0; oc < o; oc++) {
      const g = Math.floor(oc / og);
      for (let yi = 0; yi < oh; yi++) {
        for (let xi = 0; xi < ow; xi++) {
          let sum = bv ? bv[oc] : 0;
          for (let ic = 0; ic < cg; ic++) {
            const ci = g * cg + ic;
            for (let ky = 0; ky < kh; ky++) {
              for (let kx = 0; kx < kw; kx++) {
                const iy = yi * stride[0] - padding[0] + ky * dilation[0];
                const ix = xi * stride[1] - padding[1] + kx * dilation[1];
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                sum += xv[((ni * c + ci) * h + iy) * wd + ix] * wv[((oc * cg + ic) * kh + ky) * kw + kx];
              }
            }
          }
          data.push(sum);
        }
      }
    }
  }
  return { shape: [n, o, oh, ow], data };
}

type AnyCtor = ((...args: unknown[]) => nn.Module) & (new (...args: unknown[]) => nn.Module);
const loose = (ctor: unknown): AnyCtor => ctor as AnyCtor;

let py: PyOut;
beforeAll(() => {
  py = JSON.parse(python(PY_CASES)) as PyOut;
});

describe('nn modules against PyTorch 1.13', () => {
  it('the seed branch names its parameters as PyTorch and computes the same logits', () => {
    const branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
    expect(branch.namedParameters().map(([name]) => name)).toEqual(['2.weight', '2.bias']);
    expect(py.branchParams).toEqual(['2.weight', '2.bias']);
    loadPattern(branch);
    const out = branch.forward(input([2, 64, 15, 15], 1));
    expect(out.shape).toEqual([2, 10]);
    expect(absMax(py.branch)).toBeGreaterThan(0.05);
    expect(maxAbsDiff(out, py.branch)).toBeLessThanOrEqual(1e-5);
  });

  it('a conv/bn/pool/dropout/linear stack in eval mode matches, key for key and value for value', () => {
    const model = nn.Sequential(nn.Conv2d(3, 6, 3, { padding: 1 }), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(6, 4, [3, 2], { stride: [2, 1], padding: [1, 0], dilation: [1, 2], groups: 2 }),
      nn.AdaptiveAvgPool2d([2, 3]), nn.Flatten(), nn.Dropout(0.3), nn.Linear(24, 5), nn.BatchNorm1d(5));
    expect(Object.keys(model.stateDict())).toEqual(py.evalKeys);
    loadPattern(model);
    model.eval();
    const out = model.forward(input([2, 3, 10, 10], 2));
    expect(absMax(py.evalOut)).toBeGreaterThan(0.1);
    expect(maxAbsDiff(out, py.evalOut)).toBeLessThanOrEqual(1e-5);
    // Eval mode is deterministic (Dropout off) and leaves the running statistics alone.
    expect(model.forward(input([2, 3, 10, 10], 2)).toArray()).toEqual(out.toArray());
    expect(model.stateDict()['9.num_batches_tracked'].item()).toBe(3);
  });

  it('training mode: batch statistics, running-stat updates (momentum 0.1 and cumulative) and gradients match', () => {
    const model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 6),
      nn.BatchNorm1d(6, { momentum: null }));
    loadPattern(model);
    model.train();
    model.forward(input([4, 3, 10, 10], 3));
    const y = model.forward(input([4, 3, 10, 10], 4));
    y.pow(2).sum().backward();
    expect(maxAbsDiff(y, py.trainOut)).toBeLessThanOrEqual(1e-5);
    const state = model.stateDict();
    expect(Object.keys(state)).toEqual(Object.keys(py.trainState));
    for (const [name, ref] of Object.entries(py.trainState)) {
      expect([name, maxAbsDiff(state[name], ref) <= 1e-5]).toEqual([name, true]);
    }
    expect(state['1.num_batches_tracked'].item()).toBe(5);
    expect(state['5.num_batches_tracked'].item()).toBe(5);
    const params = Object.fromEntries(model.namedParameters());
    expect(Object.keys(params)).toEqual(Object.keys(py.trainGrads));
    for (const [name, ref] of Object.entries(py.trainGrads)) {
      const grad = params[name].grad;
      expect(grad).not.toBeNull();
      const tolerance = 1e-5 * Math.max(1, absMax(ref));
      expect([name, maxAbsDiff(grad!, ref) <= tolerance]).toEqual([name, true]);
    }
    expect(absMax(py.trainGrads['0.weight'])).toBeGreaterThan(0.01);
  });

  it.each(['zeros', 'reflect', 'replicate', 'circular'] as const)('Conv2d with paddingMode %s matches', (mode) => {
    const conv = nn.Conv2d(2, 3, 3, { padding: [1, 2], paddingMode: mode });
    loadPattern(conv);
    const out = conv.forward(input([1, 2, 5, 6], 5));
    const ref = py[`pad_${mode}`] as RefTensor;
    expect(ref.shape).toEqual([1, 3, 5, 8]);
    expect(maxAbsDiff(out, ref)).toBeLessThanOrEqual(1e-5);
  });

  it('pooling options (ceil mode, padding, countIncludePad, divisorOverride, dilation, adaptive sizes) match', () => {
    const x = input([1, 2, 7, 7], 6);
    const cases: Array<[string, nn.Module]> = [
      ['avgCeil', nn.AvgPool2d(3, { stride: 2, padding: 1, ceilMode: true, countIncludePad: false })],
      ['avgCountPad', nn.AvgPool2d(3, { stride: 2, padding: 1 })],
      ['avgDivisor', nn.AvgPool2d(2, { divisorOverride: 3 })],
      ['maxDilated', nn.MaxPool2d(3, { stride: 2, padding: 1, dilation: 2, ceilMode: true })],
      ['adaptive', nn.AdaptiveAvgPool2d([3, 2])],
    ];
    for (const [name, module] of cases) {
      const ref = py[name] as RefTensor;
      expect([name, maxAbsDiff(module.forward(x), ref) <= 1e-6]).toEqual([name, true]);
    }
    // The options change the result: ceil mode and countIncludePad are not ignored.
    expect((py.avgCeil as RefTensor).shape).toEqual([1, 2, 4, 4]);
    expect(maxAbsDiff(fromRef(py.avgCeil as RefTensor), py.avgCountPad as RefTensor)).toBeGreaterThan(1e-3);
    expect((py.avgDivisor as RefTensor).shape).toEqual([1, 2, 3, 3]);
    expect((py.maxDilated as RefTensor).shape).toEqual([1, 2, 3, 3]);
  });

  it('nested Sequentials name modules, parameters, buffers and state as PyTorch, in its order', () => {
    const model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.BatchNorm1d(2));
    expect(model.namedModules().map(([name]) => name)).toEqual(py.nestedModules);
    expect(model.namedParameters().map(([name]) => name)).toEqual(py.nestedParams);
    expect(model.namedBuffers().map(([name]) => name)).toEqual(py.nestedBuffers);
    expect(Object.keys(model.stateDict())).toEqual(py.nestedState);
    expect(py.nestedState).toEqual(['0.0.weight', '0.0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var', '1.num_batches_tracked']);
  });
});

describe('heads on sequences against PyTorch: LayerNorm, Tanh, GELU, Embedding, Select', () => {
  it("DeeBERT's off-ramp (the [CLS] token, LayerNorm, pooler with Tanh, classifier): keys, logits and gradients", () => {
    const ramp = nn.Sequential(nn.Select(1, 0), nn.LayerNorm(8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3));
    expect(Object.keys(ramp.stateDict())).toEqual(py.rampKeys);
    loadPattern(ramp);
    const y = ramp.forward(input([2, 5, 8], 7));
    y.pow(2).sum().backward();
    expect(absMax(py.ramp as RefTensor)).toBeGreaterThan(0.05);
    expect(maxAbsDiff(y, py.ramp as RefTensor)).toBeLessThanOrEqual(1e-5);
    for (const [name, parameter] of ramp.namedParameters()) {
      expect([name, maxAbsDiff(parameter.grad!, (py.rampGrads as Record<string, RefTensor>)[name]) <= 1e-5]).toEqual([name, true]);
    }
  });

  it('GELU (exact and tanh), LayerNorm over two dimensions and without affine parameters', () => {
    const x = input([2, 5, 8], 7);
    expect(maxAbsDiff(nn.GELU().forward(x), py.gelu as RefTensor)).toBeLessThanOrEqual(1e-6);
    expect(maxAbsDiff(nn.GELU('tanh').forward(x), py.geluTanh as RefTensor)).toBeLessThanOrEqual(1e-6);
    expect(maxAbsDiff(fromRef(py.gelu as RefTensor), py.geluTanh as RefTensor)).toBeGreaterThan(1e-5);
    const norm = nn.LayerNorm([5, 8], { eps: 1e-3 });
    loadPattern(norm);
    expect(maxAbsDiff(norm.forward(x), py.layerNorm2 as RefTensor)).toBeLessThanOrEqual(1e-5);
    const plain = nn.LayerNorm(8, { elementwiseAffine: false });
    expect(plain.namedParameters()).toEqual([]);
    expect(maxAbsDiff(plain.forward(x), py.layerNormPlain as RefTensor)).toBeLessThanOrEqual(1e-5);
    expect(() => nn.GELU('fast' as never)).toThrow(/approximate must be 'none' or 'tanh'/);
    expect(() => nn.LayerNorm([])).toThrow(/normalizedShape must be a positive integer or a list of them/);
  });

  it('Embedding looks rows up by id; the padding row starts at zero and gets no gradient', () => {
    torch.manualSeed(1);
    const fresh = nn.Embedding(10, 4, { paddingIdx: -10 });
    expect(fresh.stateDict().weight.select(0, 0).abs().sum().item()).toBe(0);
    expect(fresh.stateDict().weight.select(0, 1).abs().sum().item()).toBeGreaterThan(0);
    const embedding = nn.Embedding(10, 4, 0);
    loadPattern(embedding);
    const ids = torch.tensor([[0, 3, 9], [2, 0, 3]], { dtype: 'int64' });
    const e = embedding.forward(ids);
    e.pow(2).sum().backward();
    expect(maxAbsDiff(e, py.embedding as RefTensor)).toBeLessThanOrEqual(1e-6);
    expect(maxAbsDiff(embedding.namedParameters()[0][1].grad!, py.embeddingGrad as RefTensor)).toBeLessThanOrEqual(1e-6);
    expect(() => nn.Embedding(10, 4, 10)).toThrow(/paddingIdx must be within num_embeddings \(10\), got 10/);
  });

  it('Select takes one position along a dimension, as torch.select, negative indices too', () => {
    const x = input([2, 5, 8], 7);
    expect(nn.Select(1, -1).forward(x).toArray()).toEqual(x.select(1, 4).toArray());
    expect(nn.Select(2, 3).forward(x).shape).toEqual([2, 5]);
    expect(() => nn.Select(1, 5).forward(x)).toThrow(/index 5 out of range/);
  });
});

describe('nn modules against formulas', () => {
  it('Linear computes x W^T + b with its own parameters, and x W^T without bias', () => {
    const linear = nn.Linear(4, 3);
    const [weight, bias] = linear.parameters();
    const x = torch.randn([5, 4]);
    const ref = x.matmul(weight.transpose(0, 1)).add(bias);
    expect(maxAbsDiff(linear.forward(x), ref)).toBeLessThanOrEqual(1e-6);
    const noBias = nn.Linear(4, 3, { bias: false });
    expect(noBias.namedParameters().map(([name]) => name)).toEqual(['weight']);
    const w = noBias.parameters()[0];
    expect(maxAbsDiff(noBias.forward(x), x.matmul(w.transpose(0, 1)))).toBeLessThanOrEqual(1e-6);
    // Leading dimensions broadcast as in PyTorch.
    expect(linear.forward(torch.randn([2, 7, 4])).shape).toEqual([2, 7, 3]);
  });

  it('Linear gradients are sum of inputs for the weight rows and the batch size for the bias', () => {
    const linear = nn.Linear(3, 2);
    const x = torch.tensor([[1, 2, 3], [-1, 0.5, 4]], { dtype: 'float32' });
    linear.forward(x).sum().backward();
    const [weight, bias] = linear.parameters();
    expect(weight.grad!.toArray()).toEqual([[0, 2.5, 7], [0, 2.5, 7]]);
    expect(bias.grad!.toArray()).toEqual([2, 2]);
  });

  it('Conv2d with weights loaded by loadStateDict equals a direct convolution', () => {
    const conv = nn.Conv2d(4, 6, [2, 3], { stride: [1, 2], padding: 1, dilation: [2, 1], groups: 2 });
    const weight = pattern([6, 2, 2, 3], 1).mul(7);
    const bias = torch.tensor([0.5, -0.25, 1, 0, -1, 2], { dtype: 'float32' });
    conv.loadStateDict({ weight, bias });
    const x = input([2, 4, 6, 7], 2);
    const ref = naiveConv2d(x, weight, bias, [1, 2], [1, 1], [2, 1], 2);
    const out = conv.forward(x);
    expect(out.shape).toEqual(ref.shape);
    expect(maxAbsDiff(out, ref.data)).toBeLessThanOrEqual(1e-5);
    expect(Math.max(...ref.data.map(Math.abs))).toBeGreaterThan(1);
    const plain = nn.Conv2d(4, 6, 3, { bias: false });
    expect(plain.namedParameters().map(([name]) => name)).toEqual(['weight']);
    expect(plain.parameters()[0].shape).toEqual([6, 4, 3, 3]);
    const w = plain.parameters()[0];
    expect(maxAbsDiff(plain.forward(x), naiveConv2d(x, w, null, [1, 1], [0, 0], [1, 1], 1).data)).toBeLessThanOrEqual(1e-5);
  });

  it('AvgPool2d(3) takes the mean of each 3x3 block, dropping the remainder', () => {
    const six = torch.arange(36).float().reshape(1, 1, 6, 6);
    expect(nn.AvgPool2d(3).forward(six).toArray()).toEqual([[[[7, 10], [25, 28]]]]);
    const seven = torch.arange(49).float().reshape(1, 1, 7, 7);
    expect(nn.AvgPool2d(3).forward(seven).toArray()).toEqual([[[[8, 11], [29, 32]]]]);
    expect(nn.AvgPool2d(2, { stride: 1 }).forward(torch.arange(9).float().reshape(1, 1, 3, 3)).toArray())
      .toEqual([[[[2, 3], [5, 6]]]]);
  });

  it('MaxPool2d takes the maximum of each window', () => {
    const x = torch.tensor([[[[1, 5, 2, 0], [3, 4, 8, 1], [0, 0, -1, -2], [9, -3, -4, -5]]]], { dtype: 'float32' });
    expect(nn.MaxPool2d(2).forward(x).toArray()).toEqual([[[[5, 8], [9, -1]]]]);
    expect(nn.MaxPool2d(3, { stride: 1 }).forward(x).toArray()).toEqual([[[[8, 8], [9, 8]]]]);
  });

  it('AdaptiveAvgPool2d averages equal regions', () => {
    const x = torch.arange(24).float().reshape(1, 1, 4, 6);
    expect(nn.AdaptiveAvgPool2d([2, 3]).forward(x).toArray()).toEqual([[[[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]]]]);
    const y = torch.randn([2, 3, 5, 4]);
    const pooled = nn.AdaptiveAvgPool2d(1).forward(y);
    expect(pooled.shape).toEqual([2, 3, 1, 1]);
    expect(maxAbsDiff(pooled, y.mean([2, 3], true))).toBeLessThanOrEqual(1e-6);
  });

  it('Flatten flattens startDim..endDim and keeps the values in order', () => {
    const x = torch.arange(120).reshape(2, 3, 4, 5);
    expect(nn.Flatten().forward(x).shape).toEqual([2, 60]);
    expect(nn.Flatten(0).forward(x).shape).toEqual([120]);
    expect(nn.Flatten(1, 2).forward(x).shape).toEqual([2, 12, 5]);
    expect(nn.Flatten({ startDim: 2 }).forward(x).shape).toEqual([2, 3, 20]);
    expect(nn.Flatten(-3, -2).forward(x).shape).toEqual([2, 12, 5]);
    expect(nn.Flatten().forward(x).toArray()).toEqual(x.reshape(2, 60).toArray());
  });

  it('ReLU zeroes negatives, in place when asked', () => {
    const x = torch.tensor([-2, -0.5, 0, 0.5, 3], { dtype: 'float32' });
    expect(nn.ReLU().forward(x).toArray()).toEqual([0, 0, 0, 0.5, 3]);
    expect(x.toArray()).toEqual([-2, -0.5, 0, 0.5, 3]);
    const out = nn.ReLU({ inplace: true }).forward(x);
    expect(x.toArray()).toEqual([0, 0, 0, 0.5, 3]);
    expect(out.toArray()).toEqual([0, 0, 0, 0.5, 3]);
  });

  it('Identity returns its input', () => {
    const x = torch.randn([3, 2]);
    const out = nn.Identity().forward(x);
    expect(out.toArray()).toEqual(x.toArray());
    expect(out.isSame(x)).toBe(true);
  });

  describe('BatchNorm', () => {
    const eps = 1e-5;
    const channels = (t: Tensor, dims: number) => t.reshape([1, t.numel(), ...Array(dims - 2).fill(1)]);

    function loadStats(bn: nn.Module, c: number) {
      const state = {
        weight: torch.tensor(Array.from({ length: c }, (_, i) => 0.5 + i), { dtype: 'float32' }),
        bias: torch.tensor(Array.from({ length: c }, (_, i) => i - 1), { dtype: 'float32' }),
        running_mean: torch.tensor(Array.from({ length: c }, (_, i) => 0.25 * i - 0.5), { dtype: 'float32' }),
        running_var: torch.tensor(Array.from({ length: c }, (_, i) => 2 - 0.5 * i), { dtype: 'float32' }),
        num_batches_tracked: torch.tensor(0),
      };
      bn.loadStateDict(state);
      return state;
    }

    it('has PyTorch parameters, buffers and initial values', () => {
      const bn = nn.BatchNorm2d(3);
      expect(bn.namedParameters().map(([name, t]) => [name, t.toArray()])).toEqual([['weight', [1, 1, 1]], ['bias', [0, 0, 0]]]);
      expect(bn.namedBuffers().map(([name, t]) => [name, t.dtype, t.toArray()])).toEqual([
        ['running_mean', 'float32', [0, 0, 0]], ['running_var', 'float32', [1, 1, 1]], ['num_batches_tracked', 'int64', 0]]);
      expect(bn.buffers().every((t) => !t.requiresGrad)).toBe(true);
      expect(bn.parameters().every((t) => t.requiresGrad)).toBe(true);
      const bare = nn.BatchNorm1d(3, { affine: false, trackRunningStats: false });
      expect(Object.keys(bare.stateDict())).toEqual([]);
    });

    it('BatchNorm2d in eval mode is (x - mean) / sqrt(var + eps) * w + b with the running statistics', () => {
      const bn = nn.BatchNorm2d(3).eval();
      const s = loadStats(bn, 3);
      const x = torch.randn([2, 3, 4, 5]);
      const ref = x.sub(channels(s.running_mean, 4)).div(channels(s.running_var, 4).add(eps).sqrt())
        .mul(channels(s.weight, 4)).add(channels(s.bias, 4));
      expect(maxAbsDiff(bn.forward(x), ref)).toBeLessThanOrEqual(1e-5);
      expect(bn.stateDict().running_mean.toArray()).toEqual(s.running_mean.toArray());
      expect(bn.stateDict().num_batches_tracked.item()).toBe(0);
    });

    it('BatchNorm1d in eval mode uses the formula for (N, C) and (N, C, L) inputs', () => {
      const bn = nn.BatchNorm1d(4, { eps: 1e-3 }).eval();
      const s = loadStats(bn, 4);
      for (const shape of [[6, 4], [3, 4, 5]]) {
        const x = torch.randn(shape);
        const ref = x.sub(channels(s.running_mean, shape.length)).div(channels(s.running_var, shape.length).add(1e-3).sqrt())
          .mul(channels(s.weight, shape.length)).add(channels(s.bias, shape.length));
        expect(maxAbsDiff(bn.forward(x), ref)).toBeLessThanOrEqual(1e-5);
      }
    });

    it('BatchNorm2d in train mode normalises by batch statistics and updates the running ones by momentum 0.1', () => {
      const bn = nn.BatchNorm2d(3);
      expect(bn.training).toBe(true);
      const s = loadStats(bn, 3);
      const x = torch.randn([4, 3, 5, 5]).mul(3).add(1);
      const mean = x.mean([0, 2, 3]);
      const biasedVar = x.sub(channels(mean, 4)).pow(2).mean([0, 2, 3]);
      const count = 4 * 5 * 5;
      const unbiasedVar = biasedVar.mul(count / (count - 1));
      const ref = x.sub(channels(mean, 4)).div(channels(biasedVar, 4).add(eps).sqrt())
        .mul(channels(s.weight, 4)).add(channels(s.bias, 4));
      expect(maxAbsDiff(bn.forward(x), ref)).toBeLessThanOrEqual(1e-4);
      const state = bn.stateDict();
      expect(maxAbsDiff(state.running_mean, s.running_mean.mul(0.9).add(mean.mul(0.1)))).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(state.running_var, s.running_var.mul(0.9).add(unbiasedVar.mul(0.1)))).toBeLessThanOrEqual(1e-5);
      expect(state.num_batches_tracked.item()).toBe(1);
      // The update really happened: the batch statistics differ from the loaded ones.
      expect(maxAbsDiff(state.running_var, s.running_var)).toBeGreaterThan(0.1);
    });

    it('momentum null keeps a cumulative average of the batch means', () => {
      const bn = nn.BatchNorm1d(2, { momentum: null });
      const a = torch.tensor([[1, 10], [3, 30]], { dtype: 'float32' });
      const b = torch.tensor([[5, -10], [7, -20]], { dtype: 'float32' });
      bn.forward(a);
      expect(bn.stateDict().running_mean.toArray()).toEqual([2, 20]);
      bn.forward(b);
      expect(bn.stateDict().running_mean.toArray()).toEqual([4, 2.5]);
      expect(bn.stateDict().num_batches_tracked.item()).toBe(2);
    });

    it('without running statistics, eval mode still normalises by the batch', () => {
      const bn = nn.BatchNorm1d(2, { affine: false, trackRunningStats: false }).eval();
      const out = bn.forward(torch.tensor([[1, 2], [3, 6]], { dtype: 'float32' })).toArray() as number[][];
      // mean [2, 4], biased variance [1, 4]
      expect(out[0][0]).toBeCloseTo(-1 / Math.sqrt(1 + eps), 6);
      expect(out[1][1]).toBeCloseTo(2 / Math.sqrt(4 + eps), 6);
    });
  });

  describe('Dropout', () => {
    it('is the identity in eval mode', () => {
      const dropout = nn.Dropout(0.5).eval();
      const x = torch.randn([1000]);
      const out = dropout.forward(x);
      expect(out.toArray()).toEqual(x.toArray());
    });

    it('in train mode zeroes about p of the elements and scales the rest by 1/(1-p)', () => {
      const dropout = nn.Dropout(0.3);
      expect(dropout.training).toBe(true);
      const n = 200000;
      const out = values(dropout.forward(torch.ones([n])));
      const zeros = out.filter((v) => v === 0).length;
      expect(zeros / n).toBeGreaterThan(0.29);
      expect(zeros / n).toBeLessThan(0.31);
      const kept = new Set(out.filter((v) => v !== 0));
      expect(kept.size).toBe(1);
      expect([...kept][0]).toBeCloseTo(1 / 0.7, 6);
    });

    it('draws its mask from the seeded generator, p = 0 keeps and p = 1 drops everything', () => {
      const dropout = nn.Dropout({ p: 0.5 });
      const x = torch.randn([64]);
      torch.manualSeed(11);
      const first = dropout.forward(x).toArray();
      torch.manualSeed(11);
      expect(dropout.forward(x).toArray()).toEqual(first);
      expect(dropout.forward(x).toArray()).not.toEqual(first);
      expect(nn.Dropout(0).forward(x).toArray()).toEqual(x.toArray());
      expect(values(nn.Dropout(1).forward(x)).every((v) => v === 0)).toBe(true);
    });

    it('follows the training flag of an enclosing Sequential', () => {
      const model = nn.Sequential(nn.Dropout(0.9));
      const x = torch.ones([1000]);
      model.eval();
      expect(model.forward(x).toArray()).toEqual(x.toArray());
      model.train();
      expect(values(model.forward(x)).filter((v) => v === 0).length).toBeGreaterThan(800);
    });
  });
});

describe('PyTorch default initialisation', () => {
  it('Linear(1600, 10) draws weight and bias uniformly within ±1/sqrt(1600)', () => {
    const linear = nn.Linear(1600, 10);
    const bound = 1 / Math.sqrt(1600);
    const w = values(linear.parameters()[0]);
    expect(w.length).toBe(16000);
    expect(Math.max(...w.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...w)).toBeGreaterThan(0.95 * bound);
    expect(Math.min(...w)).toBeLessThan(-0.95 * bound);
    expect(new Set(w).size).toBeGreaterThan(15000);
    const mean = w.reduce((a, b) => a + b, 0) / w.length;
    const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
    expect(Math.abs(mean)).toBeLessThan(1e-3);
    expect(std / (bound / Math.sqrt(3))).toBeGreaterThan(0.97);
    expect(std / (bound / Math.sqrt(3))).toBeLessThan(1.03);
    const b = values(linear.parameters()[1]);
    expect(Math.max(...b.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(new Set(b).size).toBe(10);
  });

  it('Conv2d(3, 8, 3) bounds by 1/sqrt(fan in = 27); each instance is fresh, the seed makes it reproducible', () => {
    const bound = 1 / Math.sqrt(27);
    const conv = nn.Conv2d(3, 8, 3);
    for (const t of conv.parameters()) {
      const v = values(t);
      expect(Math.max(...v.map(Math.abs))).toBeLessThanOrEqual(bound);
    }
    expect(Math.max(...values(conv.parameters()[0]).map(Math.abs))).toBeGreaterThan(0.8 * bound);
    expect(values(nn.Conv2d(3, 8, 3).parameters()[0])).not.toEqual(values(conv.parameters()[0]));
    torch.manualSeed(5);
    const a = values(nn.Linear(6, 4).parameters()[0]);
    torch.manualSeed(5);
    expect(values(nn.Linear(6, 4).parameters()[0])).toEqual(a);
  });
});

describe('constructors', () => {
  const cases: Array<[string, unknown, unknown[]]> = [
    ['Linear', nn.Linear, [4, 2]], ['Conv2d', nn.Conv2d, [1, 2, 3]], ['BatchNorm1d', nn.BatchNorm1d, [3]],
    ['BatchNorm2d', nn.BatchNorm2d, [3]], ['ReLU', nn.ReLU, []], ['AvgPool2d', nn.AvgPool2d, [2]],
    ['MaxPool2d', nn.MaxPool2d, [2]], ['AdaptiveAvgPool2d', nn.AdaptiveAvgPool2d, [1]], ['Flatten', nn.Flatten, []],
    ['Dropout', nn.Dropout, []], ['Identity', nn.Identity, []], ['Sequential', nn.Sequential, []],
  ];

  it.each(cases)('%s works with and without new and is an instance of its class', (name, ctor, args) => {
    const Ctor = loose(ctor);
    const called = Ctor(...args);
    const constructed = new Ctor(...args);
    for (const module of [called, constructed]) {
      expect(module).toBeInstanceOf(Ctor);
      expect(module).toBeInstanceOf(nn.Module);
      expect(module.kind).toBe(name);
    }
    expect(Ctor.name).toBe(name);
    expect(called.options).toEqual(constructed.options);
  });

  it('a module is an instance of its own class only', () => {
    expect(nn.Linear(4, 2)).toBeInstanceOf(nn.Linear);
    expect(new nn.Linear(4, 2)).toBeInstanceOf(nn.Linear);
    expect(nn.Linear(4, 2)).not.toBeInstanceOf(nn.Conv2d);
  });

  it('applies PyTorch defaults and takes positional or keyword arguments alike', () => {
    expect(nn.Conv2d(3, 8, 3).options).toEqual({ inChannels: 3, outChannels: 8, kernelSize: [3, 3], stride: [1, 1], padding: [0, 0],
      dilation: [1, 1], groups: 1, bias: true, paddingMode: 'zeros' });
    expect(nn.Conv2d(3, 8, [3, 1], 2, [1, 0]).options).toEqual(nn.Conv2d(3, 8, [3, 1], { stride: 2, padding: [1, 0] }).options);
    expect(nn.MaxPool2d(3).options).toMatchObject({ kernelSize: [3, 3], stride: [3, 3], padding: [0, 0], dilation: [1, 1], ceilMode: false });
    expect(nn.AvgPool2d(3, 1).options).toMatchObject({ stride: [1, 1], countIncludePad: true, divisorOverride: null });
    expect(nn.BatchNorm2d(4).options).toEqual({ numFeatures: 4, eps: 1e-5, momentum: 0.1, affine: true, trackRunningStats: true });
    expect(nn.Dropout().options).toEqual({ p: 0.5, inplace: false });
    expect(nn.Flatten().options).toEqual({ startDim: 1, endDim: -1 });
    expect(nn.Linear(4, 2, false).options).toEqual({ inFeatures: 4, outFeatures: 2, bias: false });
  });

  it('rejects wrong argument names, missing arguments and too many arguments', () => {
    expect(() => loose(nn.Linear)(4, 2, { bais: false })).toThrow("Linear has no argument 'bais' (arguments: inFeatures, outFeatures, bias)");
    expect(() => loose(nn.Conv2d)(3, 8, 3, { padding_mode: 'zeros' })).toThrow(/Conv2d has no argument 'padding_mode'/);
    expect(() => loose(nn.Linear)(4)).toThrow(TypeError);
    expect(() => loose(nn.Linear)(4)).toThrow("Linear is missing the argument 'outFeatures'");
    expect(() => loose(nn.Conv2d)(3, 8)).toThrow("Conv2d is missing the argument 'kernelSize'");
    expect(() => loose(nn.AdaptiveAvgPool2d)()).toThrow("AdaptiveAvgPool2d is missing the argument 'outputSize'");
    expect(() => loose(nn.BatchNorm2d)({ eps: 1e-3 })).toThrow("BatchNorm2d is missing the argument 'numFeatures'");
    expect(() => loose(nn.Linear)(4, 2, true, 1)).toThrow('Linear takes at most 3 positional arguments');
    expect(() => loose(nn.Sequential)(nn.ReLU(), 3)).toThrow('Sequential: argument 1 is not an nn module');
  });

  it('rejects out-of-range values with messages', () => {
    expect(() => nn.Dropout(1.5)).toThrow(RangeError);
    expect(() => nn.Dropout(1.5)).toThrow('dropout probability has to be between 0 and 1, but got 1.5');
    expect(() => nn.Dropout({ p: -0.1 })).toThrow('dropout probability has to be between 0 and 1, but got -0.1');
    expect(() => nn.AvgPool2d(-1)).toThrow('kernelSize must be a non-negative integer or a pair of them, got -1');
    expect(() => nn.MaxPool2d([2, -2])).toThrow('kernelSize must be a non-negative integer or a pair of them, got [2,-2]');
    expect(() => nn.Conv2d(1, 2, 3, { stride: [1, 2, 3] as never })).toThrow('stride must be a non-negative integer or a pair of them, got [1,2,3]');
    expect(() => nn.AvgPool2d(2.5)).toThrow(/kernelSize must be a non-negative integer/);
    expect(() => nn.Linear(0, 2)).toThrow('inFeatures must be a positive integer, got 0');
    expect(() => nn.Conv2d(3, 8, 3, { groups: 0 })).toThrow('groups must be a positive integer, got 0');
    expect(() => nn.BatchNorm1d(-4)).toThrow('numFeatures must be a positive integer, got -4');
    expect(() => nn.Conv2d(1, 1, 3, { paddingMode: 'mirror' as never })).toThrow("paddingMode must be 'zeros', 'reflect', 'replicate' or 'circular'");
  });
});

describe('Module API', () => {
  const branch = () => nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4));

  it('forward surfaces LibTorch errors and refuses non-tensors', () => {
    expect(() => nn.Linear(4, 2).forward(torch.ones([3, 5]))).toThrow('mat1 and mat2 shapes cannot be multiplied (3x5 and 4x2)');
    expect(() => nn.BatchNorm1d(4).forward(torch.ones([3, 5]))).toThrow(/running_mean should contain 5 elements not 4/);
    expect(() => nn.Linear(2, 2).forward('x' as never)).toThrow('input must be a Tensor');
  });

  it('an empty Sequential returns its input, as in PyTorch', () => {
    const x = torch.tensor([[1, 2]], { dtype: 'float32' });
    expect(nn.Sequential().forward(x).isSame(x)).toBe(true);
    expect(nn.Sequential().namedParameters()).toEqual([]);
  });

  it('namedParameters, parameters, namedBuffers and buffers alias the children tensors', () => {
    const model = branch();
    const named = model.namedParameters();
    expect(named.map(([name]) => name)).toEqual(['0.weight', '0.bias', '1.weight', '1.bias', '4.weight', '4.bias']);
    expect(named.map(([, t]) => t.shape)).toEqual([[3, 2, 3, 3], [3], [3], [3], [4, 12], [4]]);
    const params = model.parameters();
    expect(params.length).toBe(6);
    params.forEach((t, i) => expect(t.isSame(named[i][1])).toBe(true));
    expect(params[4].isSame(model.at(4).parameters()[0])).toBe(true);
    expect(params[4].isSame(model.at(0).parameters()[0])).toBe(false);
    expect(model.namedParameters(false)).toEqual([]);
    expect(model.at(4).namedParameters(false).map(([name]) => name)).toEqual(['weight', 'bias']);
    expect(model.namedBuffers().map(([name]) => name)).toEqual(['1.running_mean', '1.running_var', '1.num_batches_tracked']);
    expect(model.buffers()[0].isSame(model.at(1).buffers()[0])).toBe(true);
    expect(model.namedBuffers(false)).toEqual([]);
  });

  it('namedChildren and namedModules list the modules given, by index', () => {
    const conv = nn.Conv2d(2, 3, 3);
    const inner = nn.Sequential(nn.ReLU(), nn.Identity());
    const model = nn.Sequential(conv, inner, nn.Flatten());
    const children = model.namedChildren();
    expect(children.map(([name]) => name)).toEqual(['0', '1', '2']);
    expect(children[0][1]).toBe(conv);
    expect(children[1][1]).toBe(inner);
    expect(model.namedModules().map(([name, m]) => [name, m.kind])).toEqual([
      ['', 'Sequential'], ['0', 'Conv2d'], ['1', 'Sequential'], ['1.0', 'ReLU'], ['1.1', 'Identity'], ['2', 'Flatten']]);
    expect(model.namedModules()[0][1]).toBe(model);
    expect(conv.namedChildren()).toEqual([]);
    expect(model.length).toBe(3);
    expect(model.at(-1).kind).toBe('Flatten');
    expect(() => model.at(3)).toThrow('index 3 is out of range for a Sequential of 3');
  });

  it('train, eval and training propagate to every child', () => {
    const inner = nn.Sequential(nn.Dropout(0.2), nn.BatchNorm1d(2));
    const model = nn.Sequential(nn.Linear(2, 2), inner);
    expect(model.training).toBe(true);
    expect(model.eval()).toBe(model);
    expect(model.namedModules().map(([, m]) => m.training)).toEqual([false, false, false, false, false]);
    expect(model.train()).toBe(model);
    expect(model.namedModules().map(([, m]) => m.training)).toEqual([true, true, true, true, true]);
    model.train(false);
    expect(inner.at(1).training).toBe(false);
    // A child can differ from its parent after the fact, as in PyTorch.
    inner.at(0).train();
    expect(inner.at(0).training).toBe(true);
    expect(model.training).toBe(false);
  });

  it("to('cpu') returns the module and keeps its tensors; unknown devices are refused", () => {
    const model = branch().eval();
    const x = torch.randn([2, 2, 4, 4]);
    const before = model.forward(x).toArray();
    const weight = model.parameters()[0];
    expect(model.to('cpu')).toBe(model);
    expect(model.parameters().every((t) => t.device === 'cpu')).toBe(true);
    expect(model.parameters()[0].isSame(weight)).toBe(true);
    expect(model.forward(x).toArray()).toEqual(before);
    expect(() => model.to('tpu')).toThrow("unknown device 'tpu'");
  });

  const cudaIt = torch.cuda.isAvailable() ? it : it.skip;
  cudaIt("to('cuda') moves parameters and buffers", () => {
    const model = branch().to('cuda');
    expect(model.parameters().every((t) => t.device === 'cuda:0')).toBe(true);
    expect(model.buffers().every((t) => t.device === 'cuda:0')).toBe(true);
    expect(model.forward(torch.randn([1, 2, 4, 4]).cuda()).device).toBe('cuda:0');
  });

  describe('stateDict and loadStateDict', () => {
    it('stateDict aliases the module tensors', () => {
      const model = branch().eval();
      const state = model.stateDict();
      expect(Object.keys(state)).toEqual(['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var',
        '1.num_batches_tracked', '4.weight', '4.bias']);
      expect(state['4.weight'].isSame(model.at(4).parameters()[0])).toBe(true);
      torch.noGrad(() => { state['4.weight'].zero_(); state['4.bias'].copy_(torch.tensor([1, 2, 3, 4], { dtype: 'float32' })); });
      expect(model.forward(torch.randn([3, 2, 4, 4])).toArray()).toEqual([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]);
    });

    it('copies values (not tensors) from another module, which then computes the same', () => {
      const a = branch().eval();
      const b = branch().eval();
      const x = torch.randn([2, 2, 4, 4]);
      expect(maxAbsDiff(a.forward(x), b.forward(x))).toBeGreaterThan(1e-3);
      loadPattern(a);
      b.loadStateDict(a.stateDict());
      expect(b.forward(x).toArray()).toEqual(a.forward(x).toArray());
      expect(b.stateDict()['1.num_batches_tracked'].item()).toBe(3);
      const bWeight = b.parameters()[0];
      expect(bWeight.isSame(a.parameters()[0])).toBe(false);
      expect(bWeight.isLeaf).toBe(true);
      expect(bWeight.requiresGrad).toBe(true);
      torch.noGrad(() => a.parameters()[0].zero_());
      expect(values(bWeight)).toEqual(values(pattern([3, 2, 3, 3], 0)));
    });

    it('converts dtypes on load, as copy_ does', () => {
      const linear = nn.Linear(2, 1);
      linear.loadStateDict({ weight: torch.tensor([[0.5, -2]], { dtype: 'float64' }), bias: torch.tensor([1], { dtype: 'float64' }) });
      expect(linear.parameters()[0].dtype).toBe('float32');
      expect(linear.forward(torch.tensor([[2, 1]], { dtype: 'float32' })).toArray()).toEqual([[0]]);
    });

    it('strict loading names missing and unexpected keys; non-strict loading loads what matches', () => {
      const model = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
      const weight = torch.zeros([10, 1600]);
      expect(() => model.loadStateDict({ '2.weight': weight })).toThrow(
        'error(s) in loading state dict for Sequential: missing key(s): 2.bias.');
      expect(() => model.loadStateDict({ '2.weight': weight, '2.bias': torch.zeros([10]), '3.weight': weight })).toThrow(
        /^error\(s\) in loading state dict for Sequential: unexpected key\(s\): 3\.weight\.$/);
      expect(() => model.loadStateDict({ '2.weight': weight, 'extra': weight })).toThrow(
        /missing key\(s\): 2\.bias\. unexpected key\(s\): extra\./);
      // Strict failures change nothing.
      expect(values(model.parameters()[0]).some((v) => v !== 0)).toBe(true);
      const bias = values(model.parameters()[1]);
      model.loadStateDict({ '2.weight': weight, 'extra': weight }, false);
      expect(values(model.parameters()[0]).every((v) => v === 0)).toBe(true);
      expect(values(model.parameters()[1])).toEqual(bias);
    });

    it('refuses shape mismatches, strict or not, and then changes nothing', () => {
      const model = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
      const bias = values(model.parameters()[1]);
      const state = { '2.weight': torch.zeros([5, 1600]), '2.bias': torch.zeros([10]) };
      const message = 'error(s) in loading state dict for Sequential: size mismatch for 2.weight: copying a param with shape [5,1600] ' +
        'from checkpoint, the shape in current model is [10,1600]';
      expect(() => model.loadStateDict(state)).toThrow(message);
      expect(() => model.loadStateDict(state, false)).toThrow(message);
      expect(values(model.parameters()[1])).toEqual(bias);
      expect(() => nn.BatchNorm2d(3).loadStateDict({ ...nn.BatchNorm2d(3).stateDict(), running_var: torch.ones([4]) }))
        .toThrow(/size mismatch for running_var/);
    });
  });

  describe('spec and fromSpec', () => {
    it('rebuild the same architecture with fresh parameters, which then load the state', () => {
      const model = nn.Sequential(
        nn.Conv2d(2, 4, [3, 1], { stride: [1, 2], padding: 1, dilation: [2, 1], groups: 2, bias: false, paddingMode: 'reflect' }),
        nn.BatchNorm2d(4, { eps: 1e-3, momentum: null }), nn.ReLU(true), nn.MaxPool2d(2, { stride: 1, ceilMode: true }),
        nn.AvgPool2d(2, { divisorOverride: 3 }), nn.AdaptiveAvgPool2d([2, 1]), nn.Flatten(1, -1), nn.Dropout(0.25),
        nn.Sequential(nn.Linear(8, 3, false), nn.Identity()), nn.BatchNorm1d(3, { affine: false }));
      loadPattern(model);
      model.eval();
      const spec = JSON.parse(JSON.stringify(model.spec()));
      expect(spec).toEqual(model.spec());
      expect(spec.children.map((c: nn.ModuleSpec) => c.kind)).toEqual(['Conv2d', 'BatchNorm2d', 'ReLU', 'MaxPool2d', 'AvgPool2d',
        'AdaptiveAvgPool2d', 'Flatten', 'Dropout', 'Sequential', 'BatchNorm1d']);
      expect(spec.children[1].options).toEqual({ numFeatures: 4, eps: 1e-3, momentum: null, affine: true, trackRunningStats: true });
      const rebuilt = nn.fromSpec(spec);
      expect(rebuilt).toBeInstanceOf(nn.Sequential);
      expect((rebuilt as nn.Sequential).at(8)).toBeInstanceOf(nn.Sequential);
      expect(rebuilt.spec()).toEqual(spec);
      expect(rebuilt.toString()).toBe(model.toString());
      const shapes = (m: nn.Module) => Object.entries(m.stateDict()).map(([name, t]) => [name, t.shape]);
      expect(shapes(rebuilt)).toEqual(shapes(model));
      const x = input([2, 2, 7, 7], 3);
      rebuilt.eval();
      expect(maxAbsDiff(rebuilt.forward(x), model.forward(x))).toBeGreaterThan(1e-4);
      rebuilt.loadStateDict(model.stateDict());
      expect(rebuilt.forward(x).toArray()).toEqual(model.forward(x).toArray());
      expect(() => nn.fromSpec({ kind: 'LSTM', options: {} })).toThrow("unknown module kind 'LSTM' in spec");
    });
  });

  it('dispose releases the module and its children; using them afterwards is an error', () => {
    const linear = nn.Linear(1600, 10);
    const model = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), linear);
    const held = model.parameters()[1];
    expect(model.isDisposed).toBe(false);
    model.dispose();
    expect(model.isDisposed).toBe(true);
    expect(linear.isDisposed).toBe(true);
    const message = 'module was disposed: it cannot be used after dispose()';
    expect(() => model.forward(torch.zeros([1, 64, 15, 15]))).toThrow(message);
    expect(() => linear.forward(torch.zeros([1, 1600]))).toThrow(message);
    expect(() => model.parameters()).toThrow(message);
    expect(() => model.stateDict()).toThrow(message);
    expect(() => model.train()).toThrow(message);
    expect(() => model.to('cpu')).toThrow(message);
    expect(() => model.training).toThrow(message);
    expect(() => model.dispose()).not.toThrow();
    // Tensors taken out before still own their memory.
    expect(held.shape).toEqual([10]);
  });

  it('toString shows each module with its options, children indented by index', () => {
    const model = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.Dropout(0.25), nn.AvgPool2d(3));
    expect(model.toString()).toBe([
      'Sequential(',
      '  (0): Sequential(',
      '    (0): Linear(inFeatures=2, outFeatures=3, bias=true)',
      '    (1): ReLU(inplace=false)',
      '  )',
      '  (1): Dropout(p=0.25, inplace=false)',
      '  (2): AvgPool2d(kernelSize=[3,3], stride=[3,3], padding=[0,0], ceilMode=false, countIncludePad=true, divisorOverride=null)',
      ')',
    ].join('\n'));
    expect(String(nn.Identity())).toBe('Identity()');
    expect(`${nn.BatchNorm1d(4)}`).toBe('BatchNorm1d(numFeatures=4, eps=0.00001, momentum=0.1, affine=true, trackRunningStats=true)');
  });
});
