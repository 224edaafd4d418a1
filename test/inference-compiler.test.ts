import { EarlyExitModel, Tensor, exitDecisions, exitScores, jit, nn, optim, torch } from '../lib';
import { binding } from '../lib/binding';
import { CAN_EXPORT, defaultOptimization, fixture, fromRef, maxAbsDiff, medianEntropySplit, mnistTwoExits, reference, scriptedInPython, seedBranch } from './helpers';

const resnet = () => reference('resnet20_reference.json');

/** ResNet-20 with a pooled linear exit at each point (its channels: 16, 32, 64 by stage). */
function exitsAt(file: string, points: string[]): EarlyExitModel {
  torch.manualSeed(0);
  const channels = (point: string) => ({ layer1: 16, layer2: 32, layer3: 64 } as Record<string, number>)[point.split('.')[0]];
  const branches: Array<[string, nn.Sequential]> = points.map((point) => [point, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    nn.Linear(channels(point), 10))]);
  return new EarlyExitModel(jit.load(fixture(file)), branches).eval();
}

const never = (n: number) => ({ criterion: 'entropy' as const, thresholds: new Array<number | null>(n).fill(null) });
const stopAt = (n: number, exit: number) => ({ criterion: 'entropy' as const, thresholds: Array.from({ length: n }, (_, i) => (i === exit ? 100 : null)) });

describe('optimizeForInference: the compiled model computes what the model does', () => {
  it.each([undefined, false])('ResNet-20 with the seed exit, optimize %s: final and exit outputs equal PyTorch\'s reference', (optimize) => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]).eval();
    model.optimizeForInference({ optimize });
    expect(model.inferenceMode).toBe(true);
    expect(model.inferenceOptimization).toBe(optimize === false ? 'frozen' : defaultOptimization());
    const x = fromRef(resnet().input);
    const full = model.forwardEarlyExit(x, never(1));
    expect(full.exit).toBe(1);
    expect(maxAbsDiff(full.output, resnet().exit.final_output)).toBeLessThanOrEqual(1e-5);
    const stopped = model.forwardEarlyExit(x, stopAt(1, 0));
    expect(stopped.exits).toEqual([0, 0]);
    expect(maxAbsDiff(stopped.output, resnet().exit.exit_output)).toBeLessThanOrEqual(1e-5);
    // Ordinary tensors come back (the compiled forward runs in inference mode): they can be
    // changed in place and take part in autograd like any other.
    const before = stopped.output.data()[0] as number;
    stopped.output.mul_(2);
    expect(stopped.output.data()[0]).toBeCloseTo(2 * before, 6);
    const weight = torch.ones([10], { requiresGrad: true });
    full.output.mul(weight).sum().backward();
    expect(maxAbsDiff(weight.grad!, full.output.sum(0))).toBeLessThanOrEqual(1e-6);
  });

  it.each(['resnet20_scripted.pt', 'resnet20_traced.pt'])('%s with exits at nested points: every exit and the final output equal the uncompiled model\'s', async (file) => {
    const points = ['layer1.0.relu1', 'layer1.2', 'layer2.1.bn2', 'layer3'];
    const model = exitsAt(file, points);
    torch.manualSeed(3);
    const x = torch.randn([5, 3, 32, 32]);
    const expected = torch.noGrad(() => model.forward(x));
    model.optimizeForInference();
    expect(maxAbsDiff(model.forwardEarlyExit(x, never(4)).output, expected[4])).toBeLessThanOrEqual(1e-5);
    for (let exit = 0; exit < points.length; exit++) {
      const result = model.forwardEarlyExit(x, stopAt(4, exit));
      expect(result.exit).toBe(exit);
      expect(maxAbsDiff(result.output, expected[exit])).toBeLessThanOrEqual(1e-5);
      const asynchronous = await model.forwardEarlyExitAsync(x, stopAt(4, exit));
      expect(maxAbsDiff(asynchronous.output, result.output)).toBe(0);
    }
    // forward() and training keep the model itself: hooks and exit outputs as before.
    const again = torch.noGrad(() => model.forward(x));
    expected.forEach((output, i) => expect(maxAbsDiff(again[i], output)).toBe(0));
  });

  it('a stopped forward runs nothing after its exit: the later exit\'s branch never runs', () => {
    const model = exitsAt('resnet20_scripted.pt', ['layer1', 'layer3']).optimizeForInference();
    const x = torch.randn([2, 3, 32, 32]);
    const [first, second] = model.eeMgr.exitsOf(model.backbone);
    model.eeMgr.deleteExitsOutputs(model.backbone);
    model.forwardEarlyExit(x, stopAt(2, 0));
    expect(model.backbone.hookOutput(first.handle.id)).toBeInstanceOf(Tensor);
    expect(model.backbone.hookOutput(second.handle.id)).toBeUndefined();
    model.forwardEarlyExit(x, never(2));
    expect(model.backbone.hookOutput(second.handle.id)).toBeInstanceOf(Tensor);
  });

  it('per-sample exits at the compiled model\'s batch boundaries equal each sample run alone', () => {
    const model = mnistTwoExits();
    const { x, outputs, thresholds, expected } = medianEntropySplit(model);
    model.optimizeForInference();
    const result = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds, perSample: true });
    expect(result.exits).toEqual(expected);
    for (let j = 0; j < 16; j++) {
      const alone = model.forwardEarlyExit(x.narrow(0, j, 1), { criterion: 'entropy', thresholds, perSample: true });
      expect(alone.exits).toEqual([expected[j]]);
      expect(maxAbsDiff(result.output.narrow(0, j, 1), alone.output)).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(result.output.select(0, j), outputs[expected[j]].select(0, j))).toBeLessThanOrEqual(1e-5);
    }
  });

  it('finds batch boundaries through nested calls, and carries a block\'s input past an exit inside the block', () => {
    const model = exitsAt('resnet20_scripted.pt', ['layer1.0.relu1', 'layer1.2.relu2', 'layer2.0']);
    // layer1.0.relu1 is inside a residual block: the block's input is still needed after it.
    expect(model.exitsPerSample).toEqual([false, true, true]);
    model.optimizeForInference();
    expect(model.inferenceExitsPerSample).toEqual([true, true, true]);
    const x = torch.randn([4, 3, 32, 32]);
    const scores = exitScores(torch.noGrad(() => model.forward(x)), 'entropy');
    // layer1.2.relu2 ends a block nested two calls deep: samples can leave there. Thresholds
    // halfway between two samples' scores: a batch of one computes the last bits differently.
    const halfway = (values: number[]) => { const sorted = [...values].sort((a, b) => a - b); return (sorted[1] + sorted[2]) / 2; };
    const between = halfway(scores[1]);
    const result = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [null, between, null], perSample: true });
    expect(result.exits).toEqual(scores[1].map((s) => (s <= between ? 1 : 3)));
    // Inside the block, samples leave with the block's input carried: each as it is alone.
    const inside = { criterion: 'entropy' as const, thresholds: [halfway(scores[0]), null, null], perSample: true };
    const left = model.forwardEarlyExit(x, inside);
    expect(left.exits).toEqual(scores[0].map((s) => (s <= inside.thresholds[0]! ? 0 : 3)));
    for (let j = 0; j < 4; j++) {
      const alone = model.forwardEarlyExit(x.narrow(0, j, 1), inside);
      expect([j, alone.exit, maxAbsDiff(left.output.narrow(0, j, 1), alone.output) <= 1e-5]).toEqual([j, left.exits[j], true]);
    }
  });

  it('a value read across an exit whose batch dimension the graph does not tell makes the compiled exit refuse per-sample, naming it', () => {
    // A skip connection through a reshape with -1: which dimension of it holds the batch is
    // a matter of sizes at run time, not of the graph.
    const file = scriptedInPython('ViewSkip', `
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.second = torch.nn.Linear(8, 8)
    def forward(self, x):
        skip = x.view(-1, 2, 4)
        return self.second(torch.relu(self.first(x))) + skip.view(-1, 8)`);
    const model = new EarlyExitModel(jit.load(file), [['first', nn.Linear(8, 3)]]).eval();
    const x = torch.randn([4, 8]);
    const policy = { criterion: 'entropy' as const, thresholds: [1e9], perSample: true };
    // Compiled it cannot either, so the refusal does not send the user there; where this
    // LibTorch loads exported programs, it names their interpreter, which reads the batch
    // dimension off the exported shapes.
    let refusal = '';
    try {
      model.forwardEarlyExit(x, policy);
    } catch (error) {
      refusal = (error as Error).message;
    }
    expect(refusal).toMatch(/^forwardEarlyExit: samples cannot leave the batch alone at exit 'first': a batch-sized tensor made before it .* is still read after it/);
    expect(refusal).not.toContain('optimizeForInference');
    expect(refusal.includes('(the same model exported by torch.export can')).toBe(CAN_EXPORT);
    model.optimizeForInference();
    expect(model.inferenceExitsPerSample).toEqual([false]);
    expect(() => model.forwardEarlyExit(x, policy)).toThrow(new RegExp("samples cannot leave the batch alone at exit 'first' of the compiled model: " +
      "'skip[.\\d]*' \\(made by aten::view\\) is made before it and read after it, and where it holds the batch cannot be told from the graph; use"));
    expect(model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [1e9] }).exit).toBe(0);
  });

  it('a batch size read off the input before an exit and used after it makes the exit no batch boundary, compiled or not', () => {
    // Per-sample there would view the remaining samples with the batch size of all of them.
    const file = scriptedInPython('EarlySize', `
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)
    def forward(self, x):
        n = x.size(0)
        y = self.act(self.conv(x))
        return self.fc(y.view(n, -1))`);
    const backbone = jit.load(file);
    expect(backbone.getModule('act').isBatchBoundary).toBe(false);
    const model = new EarlyExitModel(backbone, [['act', nn.Sequential(nn.Flatten(), nn.Linear(256, 10))]]).eval();
    const x = torch.randn([4, 1, 8, 8]);
    const policy = { criterion: 'entropy' as const, thresholds: [1e9], perSample: true };
    expect(() => model.forwardEarlyExit(x, policy)).toThrow(/samples cannot leave the batch alone at exit 'act'/);
    model.optimizeForInference();
    expect(() => model.forwardEarlyExit(x, policy)).toThrow(new RegExp("samples cannot leave the batch alone at exit 'act' of the compiled model: " +
      "'n[.\\d]*' \\(made by aten::size\\) is made before it and read after it, and it is the batch size, a number that cannot lose samples; use"));
    // A whole-batch stop is still fine there.
    expect(model.forwardEarlyExit(x, { criterion: 'entropy', thresholds: [1e9] }).exit).toBe(0);
  });

  it('jit.optimizeForInference gives a frozen copy: equal outputs, no submodules to hook, the original untouched', () => {
    const plain = jit.load(fixture('resnet20_scripted.pt')).eval();
    const optimized = jit.optimizeForInference(plain);
    const x = fromRef(resnet().input);
    expect(maxAbsDiff(torch.noGrad(() => optimized.forward(x)) as Tensor, resnet().output)).toBeLessThanOrEqual(1e-5);
    expect(() => optimized.getModule('layer1')).toThrow(/no module named 'layer1'/);
    expect(maxAbsDiff(torch.noGrad(() => plain.forward(x)) as Tensor, resnet().output)).toBeLessThanOrEqual(1e-5);
    expect(() => jit.optimizeForInference(jit.load(fixture('resnet20_scripted.pt')).train())).toThrow(/train mode: call eval\(\)/);
  });

  it('jit.optimizeForInference runs a CNN with max pooling, with and without gradients on, and returns ordinary tensors', () => {
    // LibTorch 2.14 fails an internal assert when a oneDNN tensor reaches max_pool2d through
    // autograd dispatch (Python's optimize_for_inference too, outside torch.inference_mode()).
    const plain = jit.load(fixture('mnist_cnn.pt')).eval();
    const optimized = jit.optimizeForInference(plain);
    const x = torch.randn([2, 1, 28, 28]);
    const expected = torch.noGrad(() => plain.forward(x)) as Tensor;
    for (const output of [optimized.forward(x) as Tensor, torch.noGrad(() => optimized.forward(x)) as Tensor]) {
      expect(maxAbsDiff(output, expected)).toBeLessThanOrEqual(1e-5);
      expect(output.add_(1).sub(1).shape).toEqual([2, 10]); // an inference tensor would refuse the in-place add
    }
    const seen: number[][] = [];
    const handle = optimized.registerForwardHook((_module, _inputs, output) => { seen.push((output as Tensor).shape); });
    optimized.forward(x);
    handle.remove();
    expect(seen).toEqual([[2, 10]]);
  });
});

describe('optimizeForInference: a snapshot that refuses to run once the model changed', () => {
  it('names what changed: weights, mode, hooks; leaveInferenceMode goes back to the model itself', () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]).eval();
    const x = fromRef(resnet().input);
    model.optimizeForInference();
    const stale = /the model compiled for inference is out of date: (.*) since optimizeForInference\(\); call optimizeForInference\(\) again/;

    // An optimizer step changes the backbone's weights in place.
    const optimizer = new optim.SGD(model.parameters(), { lr: 1e-3 });
    const loss = model.forward(x)[1].mean();
    loss.backward();
    optimizer.step();
    expect(() => model.forwardEarlyExit(x, never(1))).toThrow(stale);
    expect(() => model.forwardEarlyExit(x, never(1))).toThrow(/'conv1\.weight' was changed in place/);
    model.optimizeForInference();
    expect(maxAbsDiff(model.forwardEarlyExit(x, never(1)).output, torch.noGrad(() => model.forward(x))[1])).toBeLessThanOrEqual(1e-5);

    // The branch's weights count too.
    torch.noGrad(() => (model.branches[0] as nn.Sequential).parameters()[0].mul_(2));
    expect(() => model.forwardEarlyExit(x, never(1))).toThrow(/'the branch at 'layer1\.2\.relu2'' was changed in place/);
    model.optimizeForInference();

    // eval() on a model in eval mode changes nothing.
    model.eval();
    expect(model.forwardEarlyExit(x, never(1)).exit).toBe(1);
    model.train().eval();
    expect(() => model.forwardEarlyExit(x, never(1))).toThrow(/mode or device was changed/);
    model.optimizeForInference();
    const handle = model.backbone.getModule('layer2').registerForwardHook(() => undefined);
    expect(() => model.forwardEarlyExit(x, never(1))).toThrow(/hooks or exits were added or removed/);
    handle.remove();
    expect(() => model.forwardEarlyExit(x, never(1))).toThrow(/hooks or exits were added or removed/);

    model.leaveInferenceMode();
    expect(model.inferenceMode).toBe(false);
    expect(maxAbsDiff(model.forwardEarlyExit(x, never(1)).output, torch.noGrad(() => model.forward(x))[1])).toBe(0);
  });

  it('refuses what it cannot compile, saying why', () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]);
    expect(() => model.optimizeForInference()).toThrow(/optimizeForInference: the model is in train mode \(the backbone or a branch\): call eval\(\) first/);
    model.eval();
    const handle = model.backbone.getModule('layer1.2.relu2').registerForwardHook(() => undefined);
    expect(() => model.optimizeForInference()).toThrow(/a JS forward hook is registered on 'layer1\.2\.relu2'/);
    handle.remove();
    expect(() => model.optimizeForInference({ optimize: 'yes' as never })).toThrow(/optimize must be a boolean or 'chains'/);
    // Where oneDNN's conversion is known to crash the process (Debian 13's LibTorch 2.6), asking for it fails with the reason.
    const problem = binding.oneDnnInferenceProblem();
    if (problem !== '') {
      expect(() => model.optimizeForInference({ optimize: true })).toThrow(`optimize: true cannot apply: ${problem}`);
      expect(jit.optimizeForInference(jit.load(fixture('resnet20_scripted.pt')).eval()).inferenceOptimization).toBe(defaultOptimization());
    } else {
      expect(model.optimizeForInference({ optimize: true }).inferenceOptimization).toBe('oneDNN');
      model.leaveInferenceMode();
    }
    expect(() => model.optimizeForInference({ fast: true } as never)).toThrow(/fast/);
    // containers_scripted calls `act` twice in one forward.
    const twice = new EarlyExitModel(jit.load(fixture('containers_scripted.pt')), [['act', nn.Identity()]]).eval();
    expect(() => twice.optimizeForInference()).toThrow(/exit point 'act' is called 2 times in one forward/);
    expect(model.inferenceMode).toBe(false);
    expect(() => model.backbone.callWithHooks('forward', [torch.randn([1, 3, 32, 32])], [], true))
      .toThrow(/not compiled for inference: call optimizeForInference\(\) first/);
  });
});
