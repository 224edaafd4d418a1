import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor, jit, torch } from '../lib';
import { fixture, fromRef, maxAbsDiff, python, reference } from './helpers';

const resnet = () => reference('resnet20_reference.json');
const containers = () => reference('containers_reference.json');

describe.each(['scripted', 'traced'])('ResNet-20 %s', (kind) => {
  const model = jit.load(fixture(`resnet20_${kind}.pt`));

  it("forward equals PyTorch's output", () => {
    const output = model.forward(fromRef(resnet().input)) as Tensor;
    expect(maxAbsDiff(output, resnet().output)).toBeLessThanOrEqual(1e-5);
  });

  it("names modules as Python's named_modules() does", () => {
    expect(model.namedModules().map(([name]) => name)).toEqual(resnet().named_modules);
    expect(model.namedChildren().map(([name]) => name)).toEqual(resnet().named_children);
    expect(model.getModule('layer1.2.relu2').qualifiedName).toBe('layer1.2.relu2');
  });

  it("has Python's parameters by name, value for value", () => {
    const params = model.namedParameters();
    const expected = resnet().named_parameters;
    expect(params.map(([name]) => name)).toEqual(Object.keys(expected));
    for (const [name, tensor] of params) expect(maxAbsDiff(tensor, expected[name])).toBe(0);
    expect(model.parameters()).toHaveLength(params.length);
    expect(model.namedBuffers().map(([name]) => name)).toEqual(Object.keys(resnet().named_buffers));
  });

  it('runs submodules on their own: conv1, bn1, relu then layer1 give layer1 output', () => {
    let x = fromRef(resnet().input);
    for (const name of ['conv1', 'bn1', 'relu', 'layer1']) x = model.getModule(name).forward(x) as Tensor;
    expect(maxAbsDiff(x, resnet().layer1_output)).toBeLessThanOrEqual(1e-5);
  });
});

describe('forwardAsync', () => {
  const model = jit.load(fixture('resnet20_scripted.pt'));
  const input = () => fromRef(resnet().input);

  it('equals the synchronous forward', async () => {
    const sync = model.forward(input()) as Tensor;
    const async = (await model.forwardAsync(input())) as Tensor;
    expect(maxAbsDiff(async, sync)).toBe(0);
  });

  it('runs without gradients under noGradAsync, and the grad mode is back at once', async () => {
    expect(torch.isGradEnabled()).toBe(true);
    const withGrad = (await model.forwardAsync(input())) as Tensor;
    const pending = torch.noGradAsync(() => model.forwardAsync(input()));
    expect(torch.isGradEnabled()).toBe(true);
    const without = (await pending) as Tensor;
    expect(withGrad.requiresGrad).toBe(true);
    expect(without.requiresGrad).toBe(false);
    expect(maxAbsDiff(without, withGrad)).toBe(0);
    expect(() => torch.noGrad(() => model.forwardAsync(input()))).toThrow(/cannot span an await.*use noGradAsync/);
  });

  it('leaves the event loop free while it runs', async () => {
    const big = torch.randn([64, 3, 32, 32]);
    let ticks = 0;
    const timer = setInterval(() => { ticks++; }, 1);
    const started = Date.now();
    await Promise.all([model.forwardAsync(big), model.forwardAsync(big)]);
    clearInterval(timer);
    expect(Date.now() - started).toBeGreaterThan(5);
    expect(ticks).toBeGreaterThan(0);
  });

  it('keeps its input alive when the caller disposes it', async () => {
    const x = input();
    const pending = model.forwardAsync(x);
    x.dispose();
    expect(maxAbsDiff((await pending) as Tensor, resnet().output)).toBeLessThanOrEqual(1e-5);
  });

  it('refuses train()/eval()/to() while a call is in flight, then allows them', async () => {
    const pending = model.forwardAsync(input());
    expect(() => model.train()).toThrow(/cannot change train\/eval mode while 1 forwardAsync call\(s\) of this model are running/);
    expect(() => model.getModule('layer1').eval()).toThrow(/await them first/);
    await pending;
    model.eval();
    expect(model.training).toBe(false);
  });

  it('rejects with the error of a bad input', async () => {
    await expect(model.forwardAsync(torch.zeros([1, 1, 28, 28]))).rejects.toThrow(
      /^forward: Given groups=1, weight of size \[16, 3, 3, 3\], expected input\[1, 1, 28, 28\] to have 3 channels/);
  });
});

describe('values in and out of TorchScript', () => {
  const model = jit.load(fixture('containers_scripted.pt'));

  it('returns a tuple as an array', () => {
    const [a, b] = model.forward(fromRef(containers().input)) as Tensor[];
    expect(maxAbsDiff(a, containers().outputs[0])).toBeLessThanOrEqual(1e-6);
    expect(maxAbsDiff(b, containers().outputs[1])).toBeLessThanOrEqual(1e-6);
  });

  it('passes floats, ints, bools, strings, lists and dicts to another method and back', () => {
    const args = containers().describe.args;
    const result = model.callMethod('describe', fromRef(args.x), args.scale, args.n, args.flag, args.name,
      args.xs.map(fromRef), { k: fromRef(args.d.k) }) as unknown[];
    const expected = containers().describe.result;
    expect(maxAbsDiff(result[0] as Tensor, expected[0])).toBeLessThanOrEqual(1e-6);
    expect(result.slice(1, 5)).toEqual(expected.slice(1, 5));
    expect((result[5] as Tensor[]).map((t, i) => maxAbsDiff(t, expected[5][i]))).toEqual([0, 0]);
    expect(maxAbsDiff((result[6] as Record<string, Tensor>).k, expected[6].k)).toBe(0);
  });

  it('fills optional arguments with their defaults', () => {
    const x = torch.ones([2]);
    expect((model.callMethod('with_optional', x) as Tensor).toArray()).toEqual([1, 1]);
    expect((model.callMethod('with_optional', x, x) as Tensor).toArray()).toEqual([2, 2]);
    expect((model.callMethod('with_optional', x, null) as Tensor).toArray()).toEqual([1, 1]);
  });

  it('lists methods and schemas', () => {
    expect(model.methodNames()).toEqual(expect.arrayContaining(['forward', 'describe', 'with_optional']));
    expect(model.methodSchema('with_optional')).toMatch(/Tensor\? y=None/);
  });

  it('names ModuleList and ModuleDict members as Python does', () => {
    expect(model.namedModules().map(([name]) => name)).toEqual(containers().named_modules);
    expect(model.getModule('heads').namedChildren().map(([name]) => name)).toEqual(['a', 'b']);
    expect(model.getModule('blocks.2').qualifiedName).toBe('blocks.2');
    expect(model.getModule('blocks').getModule('2').qualifiedName).toBe('blocks.2');
  });
});

describe('modes, devices and saving', () => {
  it('switches train and eval on every submodule', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    expect(model.training).toBe(false);
    model.train();
    expect(model.getModule('layer2.1.bn1').training).toBe(true);
    model.eval();
    expect(model.getModule('layer2.1.bn1').training).toBe(false);
  });

  it('parameters alias the model: changing one changes the forward', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    const input = fromRef(resnet().input);
    const before = model.forward(input) as Tensor;
    torch.noGrad(() => model.getModule('fc').namedParameters()[1][1].add(1).clone()).dispose();
    torch.noGrad(() => { const bias = model.getModule('fc').namedParameters()[1][1]; bias.copy_(bias.add(1)); });
    const after = model.forward(input) as Tensor;
    expect(maxAbsDiff(after.sub(before), torch.ones([2, 10]))).toBeLessThanOrEqual(1e-5);
  });

  it('moves to the CPU device (a no-op) and loads with a device option', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'), { device: 'cpu' });
    model.to('cpu');
    expect(model.parameters()[0].device).toBe('cpu');
  });

  const cudaIt = torch.cuda.isAvailable() ? it : it.skip;
  cudaIt("runs on CUDA: within float32 rounding of PyTorch's CPU output with TF32 off, within TF32's with it on", () => {
    const model = jit.load(fixture('resnet20_scripted.pt'), { device: 'cuda' });
    const x = fromRef(resnet().input).cuda();
    // PyTorch's default lets cuDNN round convolution inputs to TF32 (10-bit mantissa): an
    // H200 gives 1.5e-3 from the CPU's output here.
    expect(maxAbsDiff((model.forward(x) as Tensor).cpu(), resnet().output)).toBeLessThanOrEqual(1e-2);
    torch.backends.cudnn.allowTF32 = false;
    try {
      expect(maxAbsDiff((model.forward(x) as Tensor).cpu(), resnet().output)).toBeLessThanOrEqual(1e-4);
    } finally {
      torch.backends.cudnn.allowTF32 = true;
    }
  });

  it("saves a model that Python's torch.jit.load reads and runs", () => {
    const model = jit.load(fixture('resnet20_traced.pt'));
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-')), 'saved.pt');
    model.save(file);
    const reloaded = jit.load(file);
    expect(maxAbsDiff(reloaded.forward(fromRef(resnet().input)) as Tensor, resnet().output)).toBeLessThanOrEqual(1e-5);
    const out = python(`import torch, json; m = torch.jit.load(${JSON.stringify(file)}); ` +
      `print(json.dumps([n for n, _ in m.named_modules()][:3]))`);
    expect(JSON.parse(out)).toEqual(['', 'conv1', 'bn1']);
  });
});

describe('errors a user can act on', () => {
  it('a missing file', () => {
    expect(() => jit.load('/no/such/model.pt')).toThrow("cannot load TorchScript model '/no/such/model.pt': no such file");
  });

  it('a path that is no regular file: a named pipe, /dev/zero, a loop of links, a directory (jit.load and torch.load)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-notfile-'));
    const fifo = path.join(dir, 'model.pt');
    execFileSync('mkfifo', [fifo]);
    fs.symlinkSync(path.join(dir, 'b'), path.join(dir, 'a'));
    fs.symlinkSync(path.join(dir, 'a'), path.join(dir, 'b'));
    expect(() => jit.load(fifo)).toThrow(`cannot load TorchScript model '${fifo}': it is a named pipe (FIFO), not a regular file`);
    expect(() => jit.load('/dev/zero')).toThrow("cannot load TorchScript model '/dev/zero': it is a character device, not a regular file");
    expect(() => jit.load(path.join(dir, 'a'))).toThrow(`cannot load TorchScript model '${path.join(dir, 'a')}': it is a loop of symbolic links`);
    expect(() => jit.load(dir)).toThrow(`cannot load TorchScript model '${dir}': it is a directory`);
    expect(() => torch.load(fifo)).toThrow(/it is a named pipe \(FIFO\), not a regular file/);
    fs.rmSync(dir, { recursive: true });
  });

  it('a corrupt file', () => {
    expect(() => jit.load(fixture('corrupt.pt'))).toThrow(
      /^cannot load TorchScript model '.*corrupt\.pt': the file is truncated or not a zip archive: no end-of-central-directory record in its 3000 bytes/);
  });

  it('a file that is not a model', () => {
    expect(() => jit.load(fixture('resnet20_reference.json'))).toThrow(/^cannot load TorchScript model '.*resnet20_reference\.json': /);
  });

  it('an unknown module name, with the closest names', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    expect(() => model.getModule('layer1.2.relu3')).toThrow(
      "no module named 'layer1.2.relu3' in this model; closest names: layer1.2.relu1, layer1.2.relu2, layer1.0.relu1");
  });

  it('a frozen model has no submodules to look up', () => {
    const model = jit.load(fixture('resnet20_frozen.pt'));
    expect(maxAbsDiff(model.forward(fromRef(resnet().input)) as Tensor, resnet().output)).toBeLessThanOrEqual(1e-4);
    expect(() => model.getModule('layer1.2.relu2')).toThrow(/it has no submodules \(a frozen or inlined model loses them/);
  });

  it('a wrong input shape: the cause comes first, the TorchScript traceback after', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    let error: Error | undefined;
    try { model.forward(torch.zeros([1, 1, 28, 28])); } catch (e) { error = e as Error; }
    expect(error!.message.split('\n')[0]).toBe(
      'forward: Given groups=1, weight of size [16, 3, 3, 3], expected input[1, 1, 28, 28] to have 3 channels, but got 1 channels instead ' +
      `(model '${fixture('resnet20_scripted.pt')}', inputs [1, 1, 28, 28] float32)`);
    expect(error!.message).toContain('Traceback of TorchScript');
  });

  it('a wrong input dtype', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    expect(() => model.forward(torch.zeros([1, 3, 32, 32], { dtype: 'float64' }))).toThrow(
      /^forward: expected scalar type Double but found Float|^forward: Input type \(double\) and bias type \(float\) should be the same|^forward: .*(Double|double)/);
  });

  it('a wrong number or kind of inputs', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    expect(() => model.forward()).toThrow("forward() is missing input 'x' (Tensor)");
    expect(() => model.forward(torch.zeros([1]), torch.zeros([1]))).toThrow(/^forward\(\) takes 1 input but 2 were given/);
    expect(() => model.forward(3)).toThrow("forward() input 'x' must be Tensor, got 3");
    expect(() => model.callMethod('nope')).toThrow(/has no method 'nope' \(methods: forward\)/);
  });

  it('use after dispose', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    model.dispose();
    expect(() => model.forward(torch.zeros([1, 3, 32, 32]))).toThrow('ScriptModule was disposed: it cannot be used after dispose()');
    expect(() => model.namedModules()).toThrow('ScriptModule was disposed');
    expect(() => model.train()).toThrow('ScriptModule was disposed');
  });
});

describe('the graph executor\'s CPU fuser', () => {
  it('turns off and on for the process, as Python\'s torch._C._jit_set_texpr_fuser_enabled', () => {
    const before = jit.tensorExprFuserEnabled();
    try {
      jit.setTensorExprFuserEnabled(false);
      expect(jit.tensorExprFuserEnabled()).toBe(false);
      jit.setTensorExprFuserEnabled(true);
      expect(jit.tensorExprFuserEnabled()).toBe(true);
      expect(() => jit.setTensorExprFuserEnabled('no' as never)).toThrow(/setTensorExprFuserEnabled needs a boolean, got/);
    } finally {
      jit.setTensorExprFuserEnabled(before);
    }
  });
});
