import { EarlyExitMgr, EarlyExitModel, Tensor, jit, nn, torch } from '../lib';
import { fixture, fromRef, maxAbsDiff, reference, seedBranch } from './helpers';

const resnet = () => reference('resnet20_reference.json');
const containers = () => reference('containers_reference.json');

describe.each(['scripted', 'traced'])("the seed's example on ResNet-20 %s", (kind) => {
  it("returns [exit, final] equal to PyTorch's with the same weights", () => {
    const model = jit.load(fixture(`resnet20_${kind}.pt`));
    const eeMgr = new EarlyExitMgr();
    eeMgr.attachExits(model, [['layer1.2.relu2', seedBranch()]]);
    expect(eeMgr.exitPoints).toEqual(['layer1.2.relu2']);
    eeMgr.deleteExitsOutputs(model);
    const final = model.forward(fromRef(resnet().input)) as Tensor;
    const outputs = [...eeMgr.getExitsOutputs(model), final];
    expect(outputs).toHaveLength(2);
    expect(maxAbsDiff(outputs[0], resnet().exit.exit_output)).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff(outputs[1], resnet().exit.final_output)).toBeLessThanOrEqual(1e-5);
  });

  it('the exit output equals the branch applied to the layer1 output computed another way', () => {
    const branch = seedBranch();
    const model = new EarlyExitModel(jit.load(fixture(`resnet20_${kind}.pt`)), [['layer1.2.relu2', branch]]);
    const [exit0] = model.forward(fromRef(resnet().input));
    let x = fromRef(resnet().input);
    for (const name of ['conv1', 'bn1', 'relu', 'layer1']) x = model.backbone.getModule(name).forward(x) as Tensor;
    expect(maxAbsDiff(exit0, branch.forward(x))).toBeLessThanOrEqual(1e-6);
  });
});

describe('EarlyExitMgr', () => {
  it('attaches several exits and returns their outputs in attachment order', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    const eeMgr = new EarlyExitMgr();
    eeMgr.attachExits(model, [
      ['layer2.2.relu2', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))],
      ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))],
      ['layer1.0', nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))],
    ]);
    const outputs = eeMgr.getExitsOutputs.bind(eeMgr);
    eeMgr.deleteExitsOutputs(model);
    model.forward(fromRef(resnet().input));
    expect(outputs(model).map((t) => t.shape)).toEqual([[2, 10], [2, 10], [2, 3]]);
    expect(eeMgr.exitPoints).toEqual(['layer2.2.relu2', 'layer1.2.relu2', 'layer1.0']);
  });

  it('fails on an unknown exit point, naming it and the closest names, attaching nothing', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    const eeMgr = new EarlyExitMgr();
    expect(() => eeMgr.attachExits(model, [
      ['layer1.2.relu2', nn.Identity()],
      ['layer1.2.relu', nn.Identity()],
    ])).toThrow("no module named 'layer1.2.relu' in this model; closest names: layer1.2.relu1, layer1.2.relu2");
    expect(eeMgr.exitPoints).toEqual([]);
    expect(() => eeMgr.getExitsOutputs(model)).toThrow(/no exits are attached to this model/);
  });

  it('getExitsOutputs fails loudly when the forward did not reach an exit, as Distiller asserts', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    const eeMgr = new EarlyExitMgr();
    eeMgr.attachExits(model, [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
    eeMgr.deleteExitsOutputs(model);
    expect(() => eeMgr.getExitsOutputs(model)).toThrow("exit 'layer1.2.relu2' has no output: the last forward did not reach it");
    // A forward of layer2 alone never passes layer1.2.relu2.
    model.getModule('layer2').forward(torch.randn([1, 16, 32, 32]));
    expect(() => eeMgr.getExitsOutputs(model)).toThrow(/has no output/);
    model.getModule('layer1').forward(torch.randn([1, 16, 32, 32]));
    expect(eeMgr.getExitsOutputs(model)[0].shape).toEqual([1, 10]);
  });

  it('keeps outputs until deleted, like Distiller\'s BranchPoint.output', () => {
    const model = jit.load(fixture('resnet20_scripted.pt'));
    const eeMgr = new EarlyExitMgr();
    eeMgr.attachExits(model, [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]);
    model.forward(fromRef(resnet().input));
    const first = eeMgr.getExitsOutputs(model)[0];
    expect(eeMgr.getExitsOutputs(model)[0]).toBe(first);
    eeMgr.detachExits(model);
    expect(eeMgr.exitPoints).toEqual([]);
    expect(() => eeMgr.getExitsOutputs(model)).toThrow(/no exits are attached/);
  });

  it('exits inside a ModuleList, a ModuleDict and one of two instances of a shared class', () => {
    const model = jit.load(fixture('containers_scripted.pt'));
    const eeMgr = new EarlyExitMgr();
    const lin = nn.Linear(8, 3);
    eeMgr.attachExits(model, [['blocks.1', nn.Identity()], ['heads.a', nn.Identity()], ['right', lin]]);
    eeMgr.deleteExitsOutputs(model);
    const [a] = model.forward(fromRef(containers().input)) as Tensor[];
    const [afterRelu, headA, right] = eeMgr.getExitsOutputs(model);
    expect(maxAbsDiff(headA, a)).toBe(0);
    const x = fromRef(containers().input);
    const block0 = model.getModule('blocks.0').forward(x) as Tensor;
    expect(maxAbsDiff(afterRelu, block0.clamp(0))).toBeLessThanOrEqual(1e-6);
    const run = (name: string, input: Tensor) => model.getModule(name).forward(input) as Tensor;
    const rightOutput = run('right', run('left', run('blocks.2', afterRelu)).clamp(0));
    expect(maxAbsDiff(right, lin.forward(rightOutput))).toBeLessThanOrEqual(1e-6);
  });
});

describe('EarlyExitModel', () => {
  const exitsDef = () => [['layer1.2.relu2', seedBranch()]] as Array<[string, nn.Module]>;

  it('parameters span backbone and branches; train/eval reach the branches', () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), exitsDef());
    const names = model.namedParameters().map(([name]) => name);
    expect(names.slice(-2)).toEqual(['exits.0.2.weight', 'exits.0.2.bias']);
    expect(names).toHaveLength(Object.keys(resnet().named_parameters).length + 2);
    expect(model.parameters()).toHaveLength(names.length);
    model.train();
    expect(model.training).toBe(true);
    expect((model.branches[0] as nn.Module).training).toBe(true);
    model.eval();
    expect((model.branches[0] as nn.Module).training).toBe(false);
    expect(model.backbone.getModule('layer3.0.bn1').training).toBe(false);
    model.to('cpu');
  });

  it('gradients of an exit loss reach the backbone before the exit point and nothing after', () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), exitsDef());
    const [exit0] = model.forward(fromRef(resnet().input));
    exit0.logSoftmax(1).mean().neg().backward();
    const withGrad = model.namedParameters().filter(([, p]) => p.grad !== null && p.grad.abs().sum().item() as number > 0)
      .map(([name]) => name);
    const before = model.namedParameters().map(([name]) => name)
      .filter((name) => /^(conv1|bn1|layer1)\./.test(name) || name.startsWith('exits.'));
    expect(withGrad.sort()).toEqual(before.sort());
    for (const [name, p] of model.namedParameters()) {
      if (/^(layer2|layer3|fc)\./.test(name)) expect(p.grad).toBeNull();
    }
    model.zeroGrad();
    expect(model.parameters().filter((p) => p.grad !== null)).toEqual([]);
  });

  it('two forwardAsync calls in flight each return their own exit outputs', async () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), exitsDef()).eval();
    torch.manualSeed(1);
    const a = torch.randn([4, 3, 32, 32]);
    const b = torch.randn([4, 3, 32, 32]);
    const expectedA = torch.noGrad(() => model.forward(a));
    const expectedB = torch.noGrad(() => model.forward(b));
    const [gotA, gotB] = await Promise.all([model.forwardAsync(a), model.forwardAsync(b)]);
    expect(maxAbsDiff(gotA[0], expectedA[0])).toBe(0);
    expect(maxAbsDiff(gotA[1], expectedA[1])).toBe(0);
    expect(maxAbsDiff(gotB[0], expectedB[0])).toBe(0);
    expect(maxAbsDiff(gotB[1], expectedB[1])).toBe(0);
    expect(maxAbsDiff(gotA[0], gotB[0])).toBeGreaterThan(0);
  });
});
