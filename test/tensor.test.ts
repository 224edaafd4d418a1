import { Tensor, torch } from '../lib';

describe('tensor creation', () => {
  it('follows torch.tensor dtype inference for nested arrays', () => {
    const ints = torch.tensor([[1, 2, 3], [4, 5, 6]]);
    expect(ints.dtype).toBe('int64');
    expect(ints.shape).toEqual([2, 3]);
    expect(ints.toArray()).toEqual([[1, 2, 3], [4, 5, 6]]);
    expect(torch.tensor([0.5, 1]).dtype).toBe('float32');
    expect(torch.tensor([true, false]).dtype).toBe('bool');
    expect(torch.tensor([true, false]).toArray()).toEqual([true, false]);
    expect(torch.tensor(3.5).shape).toEqual([]);
    expect(torch.tensor(3.5).item()).toBe(3.5);
  });

  it('keeps the type of a TypedArray and takes a shape', () => {
    const t = torch.tensor(new Float64Array([1, 2, 3, 4, 5, 6]), { shape: [3, 2] });
    expect(t.dtype).toBe('float64');
    expect(t.shape).toEqual([3, 2]);
    expect(Array.from(t.data() as Float64Array)).toEqual([1, 2, 3, 4, 5, 6]);
    const longs = torch.tensor(new BigInt64Array([1n, -2n]));
    expect(longs.dtype).toBe('int64');
    expect(Array.from(longs.data() as BigInt64Array)).toEqual([1n, -2n]);
    expect(torch.tensor(new Uint8Array([0, 255])).dtype).toBe('uint8');
    expect(torch.tensor(new Int32Array([7]), { dtype: 'float32' }).toArray()).toEqual([7]);
  });

  it('converts to every dtype the API names', () => {
    for (const dtype of ['float32', 'float64', 'float16', 'bfloat16', 'int32', 'int64', 'int16', 'int8', 'uint8', 'bool'] as const) {
      const t = torch.tensor([0, 1, 2], { dtype });
      expect(t.dtype).toBe(dtype);
      expect(t.toArray()).toEqual(dtype === 'bool' ? [false, true, true] : [0, 1, 2]);
    }
  });

  it('refuses ragged arrays, wrong lengths and unknown dtypes with a clear message', () => {
    expect(() => torch.tensor([[1, 2], [3]])).toThrow(/ragged nested array at data\[1\]/);
    expect(() => torch.tensor(new Float32Array(5), { shape: [2, 3] })).toThrow('shape [2, 3] needs 6 values but 5 were given');
    expect(() => torch.tensor([1], { dtype: 'complex' as never })).toThrow(/unknown dtype 'complex'/);
    expect(() => torch.zeros([2], { device: 'tpu' })).toThrow(/unknown device 'tpu'/);
  });

  it('makes zeros, ones, full, arange and random tensors like PyTorch', () => {
    expect(torch.zeros([2, 2]).toArray()).toEqual([[0, 0], [0, 0]]);
    expect(torch.ones([3], { dtype: 'int32' }).toArray()).toEqual([1, 1, 1]);
    expect(torch.ones([3], { dtype: 'int32' }).dtype).toBe('int32');
    expect(torch.full([2], 7).toArray()).toEqual([7, 7]);
    expect(torch.full([2], 7).dtype).toBe('float32');
    expect(torch.arange(5).toArray()).toEqual([0, 1, 2, 3, 4]);
    expect(torch.arange(5).dtype).toBe('int64');
    expect(torch.arange(0, 1, 0.25).toArray()).toEqual([0, 0.25, 0.5, 0.75]);
    torch.manualSeed(3);
    const a = torch.randn([100]);
    torch.manualSeed(3);
    const b = torch.randn([100]);
    expect(a.toArray()).toEqual(b.toArray());
    const u = torch.rand([1000]).toArray() as number[];
    expect(Math.min(...u)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...u)).toBeLessThan(1);
    const r = torch.randint(3, 6, [1000]);
    expect(r.dtype).toBe('int64');
    expect(new Set(r.toArray() as number[])).toEqual(new Set([3, 4, 5]));
  });

  it('reports shape, size and numel', () => {
    const t = torch.zeros([2, 3, 4]);
    expect(t.ndim).toBe(3);
    expect(t.numel()).toBe(24);
    expect(t.size(-1)).toBe(4);
    expect(() => t.size(3)).toThrow(/out of range/);
  });
});

describe('tensor operations', () => {
  const a = () => torch.tensor([[1, 2], [3, 4]], { dtype: 'float32' });

  it('does arithmetic with broadcasting and scalars', () => {
    expect(a().add(torch.tensor([10, 20], { dtype: 'float32' })).toArray()).toEqual([[11, 22], [13, 24]]);
    expect(a().add(a(), 2).toArray()).toEqual([[3, 6], [9, 12]]);
    expect(a().sub(1).toArray()).toEqual([[0, 1], [2, 3]]);
    expect(a().mul(a()).toArray()).toEqual([[1, 4], [9, 16]]);
    expect(a().div(2).toArray()).toEqual([[0.5, 1], [1.5, 2]]);
    expect(a().pow(2).toArray()).toEqual([[1, 4], [9, 16]]);
    expect(a().neg().abs().toArray()).toEqual([[1, 2], [3, 4]]);
    expect(torch.tensor([4, 9], { dtype: 'float32' }).sqrt().toArray()).toEqual([2, 3]);
    expect(torch.tensor([5, 7]).add(1).dtype).toBe('int64');
  });

  it('multiplies matrices', () => {
    expect(a().matmul(a()).toArray()).toEqual([[7, 10], [15, 22]]);
    expect(() => a().matmul(torch.zeros([3, 3]))).toThrow(/mat1 and mat2 shapes cannot be multiplied \(2x2 and 3x3\)/);
  });

  it('reduces: sum, mean, max, argmax, topk', () => {
    expect(a().sum().item()).toBe(10);
    expect(a().sum(0).toArray()).toEqual([4, 6]);
    expect(a().sum(1, true).shape).toEqual([2, 1]);
    expect(a().mean().item()).toBe(2.5);
    expect(a().mean(1).toArray()).toEqual([1.5, 3.5]);
    expect(a().max().item()).toBe(4);
    const { values, indices } = torch.tensor([[1, 9, 3], [7, 2, 8]], { dtype: 'float32' }).max(1);
    expect(values.toArray()).toEqual([9, 8]);
    expect(indices.toArray()).toEqual([1, 2]);
    expect(indices.dtype).toBe('int64');
    expect(torch.tensor([[1, 9, 3], [7, 2, 8]]).argmax(1).toArray()).toEqual([1, 2]);
    const top = torch.tensor([5, 1, 4, 2, 3], { dtype: 'float32' }).topk(3);
    expect(top.values.toArray()).toEqual([5, 4, 3]);
    expect(top.indices.toArray()).toEqual([0, 2, 4]);
  });

  it('computes softmax and logSoftmax as the formulas say', () => {
    const x = torch.tensor([[1, 2, 3]], { dtype: 'float64' });
    const e = [1, 2, 3].map(Math.exp);
    const z = e.reduce((s, v) => s + v, 0);
    const soft = x.softmax(1).toArray() as number[][];
    soft[0].forEach((p, i) => expect(p).toBeCloseTo(e[i] / z, 12));
    const logSoft = x.logSoftmax(-1).toArray() as number[][];
    logSoft[0].forEach((p, i) => expect(p).toBeCloseTo(Math.log(e[i] / z), 12));
    expect(x.exp().log().toArray()).toEqual([[1, 2, 3]]);
  });

  it('compares elementwise', () => {
    const x = torch.tensor([1, 2, 3]);
    expect(x.eq(2).toArray()).toEqual([false, true, false]);
    expect(x.gt(torch.tensor([0, 2, 4])).toArray()).toEqual([true, false, false]);
    expect(x.le(2).toArray()).toEqual([true, true, false]);
    expect(x.ne(2).dtype).toBe('bool');
  });

  it('reshapes, views, squeezes and slices', () => {
    const x = torch.arange(24).reshape(2, 3, 4);
    expect(x.shape).toEqual([2, 3, 4]);
    expect(x.view([6, 4]).shape).toEqual([6, 4]);
    expect(x.view(-1).shape).toEqual([24]);
    expect(x.flatten(1).shape).toEqual([2, 12]);
    expect(x.unsqueeze(0).shape).toEqual([1, 2, 3, 4]);
    expect(x.unsqueeze(0).squeeze().shape).toEqual([2, 3, 4]);
    expect(x.narrow(2, 1, 2).toArray()).toEqual([[[1, 2], [5, 6], [9, 10]], [[13, 14], [17, 18], [21, 22]]]);
    expect(x.slice(1, 1, 3).shape).toEqual([2, 2, 4]);
    expect(torch.arange(10).slice(0, 1, 9, 3).toArray()).toEqual([1, 4, 7]);
    expect(x.indexSelect(0, torch.tensor([1])).shape).toEqual([1, 3, 4]);
    expect(x.transpose(0, 2).shape).toEqual([4, 3, 2]);
    expect(x.permute(2, 0, 1).shape).toEqual([4, 2, 3]);
    expect(() => x.view(5, 5)).toThrow(/shape '\[5, 5\]' is invalid for input of size 24/);
  });

  it('concatenates and stacks', () => {
    const x = torch.tensor([[1, 2]]);
    expect(torch.cat([x, x], 0).toArray()).toEqual([[1, 2], [1, 2]]);
    expect(torch.cat([x, x], 1).toArray()).toEqual([[1, 2, 1, 2]]);
    expect(torch.stack([x, x]).shape).toEqual([2, 1, 2]);
  });

  it('detaches and clones', () => {
    const x = torch.tensor([1, 2], { dtype: 'float32', requiresGrad: true });
    expect(x.requiresGrad).toBe(true);
    expect(x.detach().requiresGrad).toBe(false);
    const copy = x.detach().clone();
    copy.add(1).dispose();
    expect(copy.isSame(x)).toBe(false);
  });

  it('converts dtype and device', () => {
    const x = torch.tensor([1.7, -2.2]);
    expect(x.to('int64').toArray()).toEqual([1, -2]);
    expect(x.to('float64').dtype).toBe('float64');
    expect(x.to('cpu').device).toBe('cpu');
    expect(x.device).toBe('cpu');
  });

  it('prints like PyTorch', () => {
    expect(torch.tensor([[1, 2], [3, 4]], { dtype: 'float32' }).toString()).toBe('tensor([[1., 2.],\n        [3., 4.]])');
    expect(torch.tensor([1, 2]).toString()).toBe('tensor([1, 2])');
    expect(torch.tensor([0.5], { requiresGrad: true }).toString()).toBe('tensor([0.5000], requires_grad=True)');
    expect(torch.tensor([1, 2], { dtype: 'int32' }).toString()).toBe('tensor([1, 2], dtype=torch.int32)');
    // Past 1000 elements PyTorch shows 3 at each edge: str(torch.arange(2000)) and str(torch.arange(2000).reshape(40, 50)).
    expect(torch.arange(2000).toString()).toBe('tensor([   0,    1,    2,  ..., 1997, 1998, 1999])');
    expect(torch.arange(2000).reshape(40, 50).toString()).toBe(
      'tensor([[   0,    1,    2,  ...,   47,   48,   49],\n' +
      '        [  50,   51,   52,  ...,   97,   98,   99],\n' +
      '        [ 100,  101,  102,  ...,  147,  148,  149],\n' +
      '        ...,\n' +
      '        [1850, 1851, 1852,  ..., 1897, 1898, 1899],\n' +
      '        [1900, 1901, 1902,  ..., 1947, 1948, 1949],\n' +
      '        [1950, 1951, 1952,  ..., 1997, 1998, 1999]])');
  });

  it('turns operator errors into JS errors with the whole LibTorch message', () => {
    expect(() => torch.zeros([2, 3]).add(torch.zeros([4]))).toThrow(
      /aten::add.Tensor: The size of tensor a \(3\) must match the size of tensor b \(4\) at non-singleton dimension 1/);
    expect(() => torch.zeros([2]).item()).toThrow(/a Tensor with 2 elements cannot be converted to Scalar/);
    expect(() => torch.ones([4]).reshape('a' as never)).toThrow("argument 'shape'[0] must be int, got a");
    // 4 PB: more than a 47-bit address space holds, so even a system that overcommits memory
    // (where 4 TB would be handed out, then the process killed when it is written) refuses it.
    expect(() => torch.zeros([1e15])).toThrow(/aten::zeros: .*can't allocate memory/);
  });
});

describe('memory', () => {
  it('fails loudly after dispose', () => {
    const x = torch.ones([2]);
    x.dispose();
    expect(x.isDisposed).toBe(true);
    expect(() => x.shape).toThrow('Tensor was disposed: it cannot be used after dispose()');
    expect(() => x.add(1)).toThrow('Tensor was disposed');
    expect(x.toString()).toBe('tensor(<disposed>)');
    x.dispose();
  });

  it('tidy disposes what it created except what it returns', () => {
    let inner: Tensor | undefined;
    const kept = torch.tidy(() => {
      inner = torch.ones([3]);
      const doubled = inner.mul(2);
      return { doubled, list: [doubled.add(1)] };
    });
    expect(inner!.isDisposed).toBe(true);
    expect(kept.doubled.toArray()).toEqual([2, 2, 2]);
    expect(kept.list[0].toArray()).toEqual([3, 3, 3]);
  });

  it('tidy nests: kept tensors belong to the outer scope', () => {
    let middle: Tensor | undefined;
    torch.tidy(() => {
      middle = torch.tidy(() => torch.ones([1]));
      expect(middle.isDisposed).toBe(false);
      return undefined;
    });
    expect(middle!.isDisposed).toBe(true);
  });

  it('tidy disposes on error and refuses async functions', () => {
    let inner: Tensor | undefined;
    expect(() => torch.tidy(() => { inner = torch.ones([1]); throw new Error('boom'); })).toThrow('boom');
    expect(inner!.isDisposed).toBe(true);
    expect(() => torch.tidy(async () => torch.ones([1]))).toThrow(/cannot keep tensors across an await/);
  });
});

describe('runtime', () => {
  it('sets and reads the number of threads', () => {
    const before = torch.getNumThreads();
    torch.setNumThreads(1);
    expect(torch.getNumThreads()).toBe(1);
    torch.setNumThreads(before);
    expect(() => torch.setNumThreads(0)).toThrow(/positive number of threads/);
  });

  it('reports LibTorch and CUDA', () => {
    expect(torch.version.libtorch).toMatch(/^\d+\.\d+/);
    expect(typeof torch.cuda.isAvailable()).toBe('boolean');
    if (!torch.cuda.isAvailable()) expect(torch.cuda.deviceCount()).toBe(0);
  });

  it('noGrad turns gradient recording off and back on', () => {
    const x = torch.ones([2], { requiresGrad: true });
    const y = torch.noGrad(() => x.mul(2));
    expect(y.requiresGrad).toBe(false);
    expect(torch.isGradEnabled()).toBe(true);
    expect(x.mul(2).requiresGrad).toBe(true);
  });

  it("has PyTorch's TF32 switches and defaults: cuDNN may use TF32, cuBLAS may not", () => {
    expect(torch.backends.cudnn.allowTF32).toBe(true);
    expect(torch.backends.cuda.matmul.allowTF32).toBe(false);
    torch.backends.cudnn.allowTF32 = false;
    torch.backends.cuda.matmul.allowTF32 = true;
    expect([torch.backends.cudnn.allowTF32, torch.backends.cuda.matmul.allowTF32]).toEqual([false, true]);
    torch.backends.cudnn.allowTF32 = true;
    torch.backends.cuda.matmul.allowTF32 = false;
    expect(() => { torch.backends.cudnn.allowTF32 = 1 as never; }).toThrow('torch.backends.cudnn.allowTF32 must be a boolean, got 1');
    expect(torch.backends.cudnn.allowTF32).toBe(true);
  });

  const cudaIt = torch.cuda.isAvailable() ? it : it.skip;
  cudaIt('moves tensors to CUDA and back', () => {
    const x = torch.tensor([1, 2, 3], { dtype: 'float32' }).cuda();
    expect(x.device).toBe('cuda:0');
    expect(x.mul(2).cpu().toArray()).toEqual([2, 4, 6]);
  });
});
