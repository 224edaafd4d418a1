/**
 * Exported programs (torch.export) against eager PyTorch: the ResNet-20 of the seed exported
 * with a dynamic batch by the PyTorch beside this LibTorch (scripts/make_fixtures.py).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, ScriptModule, Tensor, earlyExitLoss, exitScores, jit, nn, optim, torch } from '../lib';
import { readArchive } from '../lib/io/zip-integrity';
import { zipStored } from '../lib/io/zip-writer';
import { CAN_EXPORT, defaultOptimization, fixture, fromRef, maxAbsDiff, python, pythonWithTorch, reference, seedBranch } from './helpers';

const describeExported = CAN_EXPORT ? describe : describe.skip;
const exported = () => reference('exported_reference.json');
const training = () => reference('training_reference.json');
const load = (): ScriptModule => torch.export.load(fixture('resnet20_exported.pt2'));

describe('torch.export.load on LibTorch older than 2.6', () => {
  (CAN_EXPORT ? it.skip : it)('is refused, naming the LibTorch needed', () => {
    fs.writeFileSync(path.join(os.tmpdir(), 'tee-not-loaded.pt2'), 'x');
    expect(() => torch.export.load(path.join(os.tmpdir(), 'tee-not-loaded.pt2')))
      .toThrow(/exported programs \(torch.export\) need LibTorch 2.6 or later, and this is LibTorch 1\.13/);
  });
});

describeExported('an exported ResNet-20 (torch.export, dynamic batch)', () => {
  it('has the modules of named_modules() that own nodes, in their order, with their classes', () => {
    const model = load();
    const withNodes = new Set<string>(exported().modules_with_nodes);
    const python = (exported().named_modules as Array<[string, string]>).filter(([name]) => name === '' || withNodes.has(name));
    const ours = model.namedModules().filter(([name]) => name === '' || withNodes.has(name));
    expect(ours.map(([name]) => name)).toEqual(python.map(([name]) => name));
    // Every module of the eager model is there (containers such as layer1 included).
    expect(model.namedModules().map(([name]) => name)).toEqual((exported().named_modules as Array<[string, string]>).map(([name]) => name));
    expect(model.getModule('layer1.0.conv1').typeName).toBe('__torch__.torch.nn.modules.conv.Conv2d');
    expect(model.namedParameters().map(([name]) => name)).toEqual(exported().named_parameters);
    expect(model.namedBuffers().map(([name]) => name)).toEqual(exported().named_buffers);
  });

  it.each([0, 1])('forward and hooks equal eager PyTorch at batch %s of the reference cases (dynamic batch)', (i) => {
    const model = load();
    const item = exported().cases[i];
    const seen = new Map<string, Tensor>();
    for (const point of Object.keys(item.hooks)) {
      model.getModule(point).registerForwardHook((_module, _inputs, output) => { seen.set(point, (output as Tensor).clone()); });
    }
    const output = torch.noGrad(() => model.forward(fromRef(item.input)));
    expect(maxAbsDiff(output, item.output)).toBeLessThanOrEqual(1e-5);
    for (const [point, expected] of Object.entries<any>(item.hooks)) {
      expect(seen.has(point)).toBe(true);
      expect(maxAbsDiff(seen.get(point)!, expected)).toBeLessThanOrEqual(1e-5);
    }
  });

  it('an exit stops the program: no later node runs', () => {
    const model = new EarlyExitModel(load(), [['layer1.2.relu2', seedBranch()]]);
    model.eval();
    const x = fromRef(exported().cases[1].input);
    const before = model.backbone.programNodesRun;
    const full = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [2] });
    const whole = model.backbone.programNodesRun - before;
    const stopped = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0] });
    const partial = model.backbone.programNodesRun - before - whole;
    expect(full.exit).toBe(1);
    expect(stopped.exit).toBe(0);
    // conv1, bn1, relu and layer1 (3 blocks of 6 to 7 nodes) run; layer2, layer3, pooling and fc do not.
    expect(whole).toBe(exported().node_count);
    expect(partial).toBeLessThan(whole / 2);
    const branch = seedBranch();
    const seen: Tensor[] = [];
    const plain = load();
    plain.getModule('layer1.2.relu2').registerForwardHook((_m, _i, output) => { seen.push(branch.forward(output as Tensor)); });
    torch.noGrad(() => plain.forward(x));
    expect(maxAbsDiff(stopped.output, seen[0])).toBeLessThanOrEqual(1e-5);
  });

  it('per-sample exits inside a block equal each sample run alone', () => {
    const model = new EarlyExitModel(load(), [['layer2.0.conv1', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))]]);
    model.eval();
    // Inside layer2.0, the block's input is still read after conv1 (its downsample): every
    // live value carries the batch in its first dimension, so the samples can leave.
    expect(model.exitsPerSample).toEqual([true]);
    // TorchScript cannot tell there: the block's input is a batch-sized tensor read after conv1.
    const scripted = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer2.0.conv1', nn.Identity()]]);
    expect(scripted.exitsPerSample).toEqual([false]);
    const x = fromRef(exported().cases[1].input);
    const exitOnly = torch.noGrad(() => model.forward(x))[0];
    const confidence = exitOnly.softmax(1).max(1).values.toArray() as number[];
    const sorted = [...confidence].sort((a, b) => a - b);
    const threshold = (sorted[0] + sorted[1]) / 2;
    const result = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [threshold], perSample: true });
    expect(result.exits.filter((e) => e === 0).length).toBe(2);
    for (let i = 0; i < 3; i++) {
      const alone = torch.noGrad(() => model.forward(x.narrow(0, i, 1)));
      const expected = result.exits[i] === 0 ? alone[0] : alone[1];
      expect(maxAbsDiff(result.output.narrow(0, i, 1), expected)).toBeLessThanOrEqual(1e-5);
    }
  });

  it("two SGD steps with Distiller's weighted loss equal PyTorch's, batch-norm statistics included", () => {
    const settings = training().settings;
    const model = new EarlyExitModel(load(), [['layer1.2.relu2', seedBranch()]]);
    model.train();
    const optimizer = new optim.SGD(model.parameters(), { lr: settings.lr, momentum: settings.momentum, weightDecay: settings.weightDecay });
    const x = fromRef(training().input);
    const y = fromRef(training().target);
    const scenario = training().scenarios.joint;
    for (let i = 0; i < settings.steps; i++) {
      const loss = earlyExitLoss(model.forward(x), y, settings.lossWeights);
      optimizer.zeroGrad();
      loss.backward();
      optimizer.step();
      expect(loss.item()).toBeCloseTo(scenario.losses[i], 5);
    }
    let worst = 0;
    for (const [name, param] of model.namedParameters()) worst = Math.max(worst, maxAbsDiff(param, scenario.parameters[name]));
    expect(worst).toBeLessThanOrEqual(1e-5);
    const [, runningMean] = model.backbone.getModule('layer3.2.bn2').namedBuffers().find(([name]) => name === 'running_mean')!;
    expect(maxAbsDiff(runningMean, scenario.running_mean)).toBeLessThanOrEqual(1e-5);
    const [, counted] = model.backbone.getModule('layer3.2.bn2').namedBuffers().find(([name]) => name === 'num_batches_tracked')!;
    expect(Number(counted.item())).toBe(settings.steps);
  });

  it('eval() gives running statistics back: the program follows the mode, not the mode it was exported in', () => {
    const model = load();
    const x = fromRef(exported().cases[1].input);
    model.train();
    const trained = torch.noGrad(() => model.forward(x));
    model.eval();
    const evaluated = torch.noGrad(() => model.forward(x));
    expect(maxAbsDiff(trained, evaluated)).toBeGreaterThan(1e-3);
    const [, counted] = model.getModule('bn1').namedBuffers().find(([name]) => name === 'num_batches_tracked')!;
    expect(Number(counted.item())).toBe(1);
  });

  it('saves trained weights as a state dict that Python loads into the eager model', () => {
    const model = load();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-exported-'));
    const file = path.join(dir, 'weights.pt');
    torch.save(model.stateDict(), file);
    expect(() => model.save(path.join(dir, 'model.pt'))).toThrow(/an exported program cannot be saved as TorchScript; save its weights with torch.save/);
    const x = exported().cases[0].input;
    const out = python(`
import json, torch
m = torch.export.load('${fixture('resnet20_exported.pt2')}').module()
m.load_state_dict(torch.load('${file}'), strict=True)
x = torch.tensor(${JSON.stringify(x.data)}).reshape(${JSON.stringify(x.shape)})
print(json.dumps(m(x).reshape(-1).tolist()))
`);
    expect(maxAbsDiff(torch.tensor(JSON.parse(out), { shape: exported().cases[0].output.shape }), exported().cases[0].output)).toBeLessThanOrEqual(1e-5);
  });

  it('the README recipe (examples/export_model.py) makes a program that runs here as in Python', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-recipe-'));
    const file = path.join(dir, 'model.pt2');
    const { execFileSync } = require('child_process') as typeof import('child_process');
    execFileSync(pythonWithTorch(), [path.join(__dirname, '..', 'examples', 'export_model.py'), file], { stdio: 'ignore' });
    const x = torch.randn([3, 1, 28, 28]);
    const expected = JSON.parse(python(`
import json, torch
x = torch.tensor(${JSON.stringify(x.toArray())})
print(json.dumps(torch.export.load('${file}').module()(x).tolist()))
`));
    const model = torch.export.load(file);
    expect(model.namedModules().map(([name]) => name)).toEqual(['', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    expect(maxAbsDiff(torch.noGrad(() => model.forward(x)), torch.tensor(expected))).toBeLessThanOrEqual(1e-5);
  });

  it('refuses a hook on a module whose output is not one tensor, naming the nodes, and runs the rest', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-pair-'));
    const file = path.join(dir, 'pair.pt2');
    const expected = JSON.parse(python(`
import json, torch
from torch import nn
class Pair(nn.Module):
    def forward(self, x):
        return x.relu(), x.sigmoid()
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = Pair()
        self.fc = nn.Linear(4, 3)
    def forward(self, x):
        a, b = self.pair(x)
        return self.fc(a * b)
torch.manual_seed(0)
net = Net().eval()
x = torch.arange(8.0).reshape(2, 4) / 8 - 0.5
torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},)), '${file}')
print(json.dumps(net(x).tolist()))
`));
    const model = torch.export.load(file);
    expect(() => model.getModule('pair').registerForwardHook(() => undefined))
      .toThrow(/registerForwardHook on 'pair': module 'pair' passes on 2 values \(nodes '.*' to '.*'\), so its output is not one tensor that a hook could see/);
    const seen: Tensor[] = [];
    model.getModule('fc').registerForwardHook((_m, _i, output) => { seen.push(output as Tensor); });
    const x = torch.arange(8).float().reshape([2, 4]).div(8).sub(0.5);
    const output = torch.noGrad(() => model.forward(x));
    expect(maxAbsDiff(output, torch.tensor(expected))).toBeLessThanOrEqual(1e-6);
    expect(seen).toHaveLength(1);
  });

  it('refuses a damaged program, naming what is wrong: JSON off the schema, weights of another shape, an unknown operator', () => {
    const { entries } = readArchive(fixture('resnet20_exported.pt2'), 'fixture');
    const jsonEntry = [...entries.keys()].find((name) => name === 'serialized_exported_program.json' || /\/models\/[^/]+\.json$/.test(name))!;
    const damaged = (edit: (program: any) => void): string => {
      const program = JSON.parse(entries.get(jsonEntry)!.toString('utf8'));
      edit(program);
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-damaged-')), 'model.pt2');
      fs.writeFileSync(file, zipStored([...entries].map(([name, bytes]) => [name, name === jsonEntry ? Buffer.from(JSON.stringify(program)) : bytes] as const), 'test'));
      return file;
    };
    expect(() => torch.export.load(damaged((program) => { program.graph_module.signature.input_specs[0] = { parameter: {} }; })))
      .toThrow(/cannot load exported program '.*': the program's JSON does not follow the export schema/);
    expect(() => torch.export.load(damaged((program) => { program.graph_module.graph.tensor_values.p_conv1_weight.sizes[0] = { as_int: 8 }; })))
      .toThrow(/the parameter 'conv1.weight' has the shape \[16,3,3,3\] in the file's weights, but the program was exported with \[8,3,3,3\]/);
    expect(() => torch.export.load(damaged((program) => {
      program.graph_module.graph.nodes.find((node: any) => node.target === 'torch.ops.aten.linear.default').target = 'torch.ops.aten.no_such_op.default';
    }))).toThrow(/node 'linear' \(aten::no_such_op.default, in module 'fc'\): this LibTorch has no operator aten::no_such_op/);
    expect(() => torch.export.load(damaged((program) => { program.schema_version.major = 9; })))
      .toThrow(/uses export schema 9, and this library reads schema 8/);
    // Batch norm's eps as a string: only the floats JSON cannot hold may come as strings ("-Infinity").
    const eps = (value: unknown) => damaged((program) => {
      const node = program.graph_module.graph.nodes.find((n: any) => n.target === 'torch.ops.aten.batch_norm.default');
      node.inputs.find((input: any) => input.name === 'eps').arg = { as_float: value };
    });
    expect(() => torch.export.load(eps('tiny'))).toThrow(/does not follow the export schema \(a float argument is "tiny"\)/);
    // With an infinite eps, batch norm's output is its bias alone.
    const infinite = torch.export.load(eps('Infinity')).eval();
    const seen: Tensor[] = [];
    infinite.getModule('bn1').registerForwardHook((_m, _i, output) => { seen.push((output as Tensor).clone()); });
    torch.noGrad(() => infinite.forward(torch.randn([1, 3, 32, 32])));
    const bias = infinite.getModule('bn1').namedParameters().find(([name]) => name === 'bias')![1];
    expect(maxAbsDiff(seen[0], torch.zeros([1, 16, 32, 32]).add(bias.view([1, 16, 1, 1])))).toBe(0);
  });

  it('refuses a file that torch.export.save did not write, saying why', () => {
    const bad = path.join(os.tmpdir(), 'tee-not-a-pt2.pt2');
    fs.copyFileSync(fixture('resnet20_scripted.pt'), bad);
    expect(() => torch.export.load(bad)).toThrow(/cannot load exported program '.*': this is not a file written by torch.export.save/);
  });
});

describeExported('optimizeForInference on an exported ResNet-20: frozen, batch norm folded, oneDNN where it runs, exits in place', () => {
  const pooled = (channels: number) => nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10));
  const points = ['layer1.2.relu2', 'layer2.0.conv1', 'layer2.1'];
  const withExits = (): EarlyExitModel => {
    torch.manualSeed(0);
    return new EarlyExitModel(load(), [['layer1.2.relu2', pooled(16)], ['layer2.0.conv1', pooled(32)], ['layer2.1', pooled(32)]]).eval();
  };
  const never = { criterion: 'entropy' as const, thresholds: [null, null, null] };
  const stopAt = (exit: number) => ({ criterion: 'entropy' as const, thresholds: points.map((_, i) => (i === exit ? 100 : null)) });

  it('the final output equals eager PyTorch, and every exit stops with the output the uncompiled model gives it', async () => {
    const model = withExits();
    const item = exported().cases[1];
    const x = fromRef(item.input);
    const expected = torch.noGrad(() => model.forward(x));
    model.optimizeForInference();
    expect(model.inferenceOptimization).toBe(defaultOptimization());
    expect(maxAbsDiff(model.forwardEarlyExit(x, never).output, item.output)).toBeLessThanOrEqual(1e-5);
    for (let exit = 0; exit < points.length; exit++) {
      const result = model.forwardEarlyExit(x, stopAt(exit));
      expect(result.exit).toBe(exit);
      expect(maxAbsDiff(result.output, expected[exit])).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff((await model.forwardEarlyExitAsync(x, stopAt(exit))).output, result.output)).toBe(0);
    }
    // A stop runs nothing after its exit: the later exits' branches never run.
    const [, second, third] = model.eeMgr.exitsOf(model.backbone);
    model.eeMgr.deleteExitsOutputs(model.backbone);
    model.forwardEarlyExit(x, stopAt(0));
    expect(model.backbone.hookOutput(second.handle.id)).toBeUndefined();
    expect(model.backbone.hookOutput(third.handle.id)).toBeUndefined();
    // The program itself does not run: the compiled model is TorchScript's.
    const nodes = model.backbone.programNodesRun;
    model.forwardEarlyExit(x, never);
    expect(model.backbone.programNodesRun).toBe(nodes);
  });

  it('per-sample exits compiled as interpreted, at batch boundaries and inside a block (its input carried past the exit)', () => {
    const model = withExits();
    const x = torch.randn([6, 3, 32, 32]);
    const scores = exitScores(torch.noGrad(() => model.forward(x)), 'entropy');
    // Between two samples' scores: the compiled model's outputs equal the interpreter's within
    // 1e-5, not bit for bit, so a threshold on a score could fall either side of it.
    const sorted = [...scores[0]].sort((a, b) => a - b);
    const between = (sorted[2] + sorted[3]) / 2;
    const policy = { criterion: 'entropy' as const, thresholds: [between, null, null], perSample: true };
    const interpreted = model.forwardEarlyExit(x, policy);
    model.optimizeForInference();
    const compiled = model.forwardEarlyExit(x, policy);
    expect(compiled.exits).toEqual(interpreted.exits);
    expect(new Set(compiled.exits).size).toBe(2);
    expect(maxAbsDiff(compiled.output, interpreted.output)).toBeLessThanOrEqual(1e-5);
    // layer2.0.conv1 is inside a block: the interpreter shrinks the block's input, the compiled model carries it.
    expect(model.exitsPerSample).toEqual([true, true, true]);
    expect(model.inferenceExitsPerSample).toEqual([true, true, true]);
    const second = [...scores[1]].sort((a, b) => a - b);
    const middle = (second[2] + second[3]) / 2;
    const inside = { criterion: 'entropy' as const, thresholds: [null, middle, null], perSample: true };
    const carried = model.forwardEarlyExit(x, inside);
    expect(new Set(carried.exits).size).toBe(2);
    model.leaveInferenceMode();
    const shrunk = model.forwardEarlyExit(x, inside);
    expect(carried.exits).toEqual(shrunk.exits);
    expect(maxAbsDiff(carried.output, shrunk.output)).toBeLessThanOrEqual(1e-5);
  });

  it('is a snapshot: refuses to run once a weight changed, and compiles only the root, in eval mode', () => {
    const model = withExits().optimizeForInference();
    const x = torch.randn([2, 3, 32, 32]);
    model.forwardEarlyExit(x, never);
    torch.noGrad(() => model.backbone.getModule('layer3.0.bn1').namedParameters()[0][1].mul_(2));
    expect(() => model.forwardEarlyExit(x, never)).toThrow(/out of date: 'layer3\.0\.bn1\.weight' was changed in place since optimizeForInference\(\)/);
    expect(() => jit.optimizeForInference(load().eval().getModule('layer1')))
      .toThrow(/only the root module of an exported program can be compiled for inference/);
    expect(() => jit.optimizeForInference(load().train())).toThrow(/train mode: call eval\(\)/);
  });

  it('jit.optimizeForInference gives a compiled copy that equals eager PyTorch at any batch; the program stays as it was', () => {
    const program = load().eval();
    const optimized = jit.optimizeForInference(program);
    for (const item of exported().cases) {
      expect(maxAbsDiff(torch.noGrad(() => optimized.forward(fromRef(item.input))) as Tensor, item.output)).toBeLessThanOrEqual(1e-5);
    }
    expect(optimized.isExportedProgram).toBe(false);
    const seen: number[][] = [];
    program.getModule('layer1').registerForwardHook((_m, _i, output) => { seen.push((output as Tensor).shape); });
    torch.noGrad(() => program.forward(torch.randn([1, 3, 32, 32])));
    expect(seen).toEqual([[1, 16, 32, 32]]);
  });
});
