import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ScriptModule, Tensor, jit, nn, torch } from '../lib';
import { fixture, fromRef, maxAbsDiff, python, reference } from './helpers';

const resnet = () => reference('resnet20_reference.json');
const containers = () => reference('containers_reference.json');

describe.each(['scripted', 'traced'])('JS forward hooks on ResNet-20 %s', (kind) => {
  const model = jit.load(fixture(`resnet20_${kind}.pt`));

  it("receive the module, its inputs and its output, as PyTorch's register_forward_hook", () => {
    const calls: Array<{ module: ScriptModule; inputs: unknown[]; output: Tensor }> = [];
    const relu2 = model.getModule('layer1.2.relu2');
    const handle = relu2.registerForwardHook((module, inputs, output) => {
      calls.push({ module, inputs, output: output as Tensor });
    });
    model.forward(fromRef(resnet().input));
    handle.remove();
    expect(calls).toHaveLength(1);
    expect(calls[0].module).toBe(relu2);
    expect(calls[0].inputs).toHaveLength(1);
    // relu2 ends layer1: its output is layer1's output; its input is that before the ReLU.
    expect(maxAbsDiff(calls[0].output, resnet().layer1_output)).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff((calls[0].inputs[0] as Tensor).clamp(0), resnet().layer1_output)).toBeLessThanOrEqual(1e-5);
  });

  it('fire once per call of their instance, never for a sibling of the same type', () => {
    const fired: string[] = [];
    const names = ['layer1.0', 'layer1.1', 'layer1.1.conv1', 'fc'];
    const handles = names.map((name) => model.getModule(name).registerForwardHook(() => { fired.push(name); }));
    // Scripting shares one class between identical blocks (one graph for both); tracing does not.
    if (kind === 'scripted') expect(model.getModule('layer1.0').typeName).toBe(model.getModule('layer1.1').typeName);
    model.forward(fromRef(resnet().input));
    handles.forEach((handle) => handle.remove());
    expect(fired).toEqual(['layer1.0', 'layer1.1.conv1', 'layer1.1', 'fc']);
  });

  it('stop firing after remove()', () => {
    let count = 0;
    const handle = model.getModule('fc').registerForwardHook(() => { count++; });
    model.forward(fromRef(resnet().input));
    handle.remove();
    model.forward(fromRef(resnet().input));
    expect(count).toBe(1);
  });

  it('run during forwardAsync, on the main thread, while the worker waits', async () => {
    const seen: number[][] = [];
    const handle = model.getModule('layer2').registerForwardHook((_m, _i, output) => { seen.push((output as Tensor).shape); });
    const output = (await model.forwardAsync(fromRef(resnet().input))) as Tensor;
    handle.remove();
    expect(seen).toEqual([[2, 32, 16, 16]]);
    expect(maxAbsDiff(output, resnet().output)).toBeLessThanOrEqual(1e-5);
  });
});

describe('hook edge cases', () => {
  const model = jit.load(fixture('containers_scripted.pt'));
  const input = () => fromRef(containers().input);

  it('a module called twice fires twice', () => {
    let count = 0;
    const handle = model.getModule('act').registerForwardHook(() => { count++; });
    model.forward(input());
    handle.remove();
    expect(count).toBe(2);
  });

  it('instances of one class fire separately (left and right share a type)', () => {
    const fired: string[] = [];
    expect(model.getModule('left').typeName).toBe(model.getModule('right').typeName);
    const handles = ['right.lin', 'left'].map((name) => model.getModule(name).registerForwardHook(() => { fired.push(name); }));
    model.forward(input());
    handles.forEach((handle) => handle.remove());
    expect(fired.sort()).toEqual(['left', 'right.lin']);
  });

  it('hooks on ModuleList and ModuleDict members fire', () => {
    const fired: string[] = [];
    const handles = ['blocks.0', 'blocks.2', 'heads.b'].map((name) => model.getModule(name).registerForwardHook(() => { fired.push(name); }));
    model.forward(input());
    handles.forEach((handle) => handle.remove());
    expect(fired).toEqual(['blocks.0', 'blocks.2', 'heads.b']);
  });

  it('a hook on the root fires with the final output', () => {
    let output: unknown;
    const handle = model.registerForwardHook((_m, _i, out) => { output = out; });
    const result = model.forward(input()) as Tensor[];
    handle.remove();
    expect((output as Tensor[])[0].isSame(result[0])).toBe(true);
  });

  it('a module that no graph calls (a ModuleDict itself) refuses a hook that would never run', () => {
    expect(() => model.getModule('heads').registerForwardHook(() => undefined)).toThrow(
      /module 'heads' is never called through forward in the TorchScript code of this model/);
  });

  it("a hook's error becomes the forward's error, the same object, and the model still works", async () => {
    const boom = new Error('hook failed on purpose');
    const handle = model.getModule('blocks.1').registerForwardHook(() => { throw boom; });
    let thrown: unknown;
    try { model.forward(input()); } catch (error) { thrown = error; }
    expect(thrown).toBe(boom);
    await expect(model.forwardAsync(input())).rejects.toBe(boom);
    handle.remove();
    expect(maxAbsDiff((model.forward(input()) as Tensor[])[0], containers().outputs[0])).toBeLessThanOrEqual(1e-6);
  });

  it('a hook that returns a value is an error: TorchScript outputs cannot be replaced', () => {
    const handle = model.getModule('blocks.1').registerForwardHook(() => torch.zeros([1]) as never);
    expect(() => model.forward(input())).toThrow(/hooks on TorchScript models cannot replace a module's output/);
    handle.remove();
  });

  it('a hook that is not a function or module is refused', () => {
    expect(() => model.getModule('act').registerForwardHook(42 as never)).toThrow(
      'a forward hook must be a function, an nn module or a ScriptModule');
  });
});

describe('native branch hooks', () => {
  it('a TorchScript module can be the branch', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    const branch = jit.load(fixture('resnet20_scripted.pt')).getModule('layer2');
    const handle = model.getModule('layer1').registerForwardHook(branch);
    const { hookOutputs } = model.callWithHooks('forward', [fromRef(resnet().input)]);
    handle.remove();
    const expected = model.getModule('layer2').forward(fromRef(resnet().layer1_output)) as Tensor;
    expect(maxAbsDiff(hookOutputs.get(handle.id) as Tensor, expected)).toBeLessThanOrEqual(1e-5);
  });

  it("a model saved with hooks attached loads in Python unchanged", () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    model.getModule('layer1.2.relu2').registerForwardHook(nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10)));
    model.getModule('layer3').registerForwardHook(() => undefined);
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-')), 'hooked.pt');
    model.save(file);
    const out = python(`import torch, json
m = torch.jit.load(${JSON.stringify(file)})
codes = [mod.code for _, mod in m.named_modules()]
x = torch.tensor(${JSON.stringify(resnet().input.data)}).reshape(${JSON.stringify(resnet().input.shape)})
print(json.dumps({"tapped": any("earlyexit" in c for c in codes), "output": m(x).flatten().tolist()}))`);
    const result = JSON.parse(out);
    expect(result.tapped).toBe(false);
    expect(maxAbsDiff(torch.tensor(new Float32Array(result.output), { shape: [2, 10] }), resnet().output)).toBeLessThanOrEqual(1e-5);
    // The model keeps its hooks after saving.
    expect(model.callWithHooks('forward', [fromRef(resnet().input)]).hookOutputs.size).toBe(1);
  });
});
