/**
 * oneDNN primitive chains (issue 28): what optimizeForInference({ optimize: 'chains' }) runs
 * must compute what the uncompiled model computes (LibTorch's own kernels, and PyTorch's
 * reference where the fixtures have one), with activations and residual adds fused into the
 * convolutions, for every batch size and for the samples that stay when others leave.
 */
import * as fs from 'fs';
import { EarlyExitModel, ScriptModule, Tensor, jit, nn, torch } from '../lib';
import { binding } from '../lib/binding';
import { fixture, fromRef, maxAbsDiff, medianEntropySplit, mnistTwoExits, reference, scriptedInPython } from './helpers';

const torchVersion = fs.readFileSync(fixture('TORCH_VERSION'), 'utf8').trim();
const problem = binding.oneDnnChainsProblem();
const withChains = problem === '' ? describe : describe.skip;

describe('where the addon has oneDNN chains', () => {
  it('has them wherever LibTorch links oneDNN 3 (2.6 and later), and elsewhere says why when asked for them', () => {
    if (torchVersion.startsWith('1.')) {
      expect(problem).toMatch(/LibTorch here links oneDNN 2 \(libdnnl\.so\.2\), and oneDNN chains are built for oneDNN 3's API/);
      const model = jit.load(fixture('resnet20_scripted.pt')).eval();
      expect(() => jit.optimizeForInference(model, { optimize: 'chains' })).toThrow(`optimize: 'chains' cannot apply: ${problem}`);
    } else {
      expect(problem).toBe('');
    }
  });
});

/** The model's own forward, without gradients: the reference the chains must meet. */
function eager(model: ScriptModule, x: Tensor): Tensor {
  return torch.noGrad(() => model.forward(x)) as Tensor;
}

withChains('optimize: \'chains\' computes what the model computes', () => {
  const cases: Array<[string, number[]]> = [
    ['resnet20_scripted.pt', [3, 32, 32]], ['resnet20_traced.pt', [3, 32, 32]], ['mnist_cnn.pt', [1, 28, 28]],
    ['mobilenet_v2_scripted.pt', [3, 64, 64]], ['mobilenet_v2_traced.pt', [3, 64, 64]], ['resnet18_traced.pt', [3, 64, 64]],
  ];
  it.each(cases)('%s at batch 1 and 5: outputs within 1e-4 of the uncompiled model', (file, shape) => {
    const model = jit.load(fixture(file)).eval();
    const chained = jit.optimizeForInference(model, { optimize: 'chains' });
    expect(chained.inferenceOptimization).toBe('oneDNN chains');
    torch.manualSeed(1);
    for (const batch of [1, 5]) {
      const x = torch.randn([batch, ...shape]);
      expect(maxAbsDiff(chained.forward(x) as Tensor, eager(model, x))).toBeLessThanOrEqual(1e-4);
    }
    // One plan per input shape, each listing what it runs.
    const chains = chained.oneDnnChains();
    expect(chains.length).toBeGreaterThan(0);
    expect(chains[0].map((plan) => plan.shape)).toEqual([`1x${shape.join('x')}`, `5x${shape.join('x')}`]);
  });

  it('ResNet-20: one chain of 21 convolutions, every ReLU and residual add a post-op, PyTorch\'s output', () => {
    const model = jit.load(fixture('resnet20_scripted.pt')).eval();
    const chained = jit.optimizeForInference(model, { optimize: 'chains' });
    const ref = reference('resnet20_reference.json');
    expect(maxAbsDiff(chained.forward(fromRef(ref.input)) as Tensor, ref.output)).toBeLessThanOrEqual(1e-4);
    const chains = chained.oneDnnChains();
    // `x.view(x.size(0), -1)` is a flatten in the chain, so the classifier is in it too: the whole forward is one chain.
    expect(chains).toHaveLength(1);
    expect(chains[0]).toHaveLength(1);
    const primitives = chains[0][0].primitives.map((primitive) => primitive.description);
    const convolutions = primitives.filter((line) => line.startsWith('convolution '));
    expect(convolutions).toHaveLength(21);
    // The model's 19 ReLUs and 9 adds (issue 28's oneDNN log showed them as 28 primitives of their own) are post-ops.
    expect(convolutions.filter((line) => line.endsWith('+relu'))).toHaveLength(19);
    expect(convolutions.filter((line) => line.includes('+add'))).toHaveLength(9);
    expect(primitives.filter((line) => /^(relu|add) /.test(line))).toHaveLength(0);
    expect(primitives.filter((line) => line.startsWith('average pooling'))).toHaveLength(1);
    // The classifier reads the pooled 2x64x1x1 batch in the layout the chain holds it in: no reorder to row-major for the flatten.
    expect(primitives.filter((line) => line.startsWith('linear '))).toEqual([expect.stringMatching(/^linear \S+ \w+ -> 2x10$/)]);
    expect(primitives.filter((line) => / -> abcd /.test(line))).toEqual([]);
    // What remains besides them: the reorders in and out of oneDNN's layout.
    expect(primitives.length - convolutions.length - 2).toBe(primitives.filter((line) => line.startsWith('reorder ')).length);
  });

  it.each([['resnet18_scripted.pt', 'resnet18'], ['resnet18_traced.pt', 'resnet18'], ['mobilenet_v2_traced.pt', 'mobilenet_v2']])(
    '%s: PyTorch\'s reference output', (file, name) => {
      // On LibTorch 2.6 this caught oneDNN 3.7's strided 1x1 brgemm kernel computing ResNet-18's last downsample wrongly.
      const chained = jit.optimizeForInference(jit.load(fixture(file)).eval(), { optimize: 'chains' });
      const ref = reference('torchvision_reference.json');
      expect(maxAbsDiff(chained.forward(fromRef(ref.input)) as Tensor, ref[name])).toBeLessThanOrEqual(1e-4);
    });

  it('the other activations and pooling, fused and alone: hardswish, GELU (both forms), max and average pooling with ceil_mode, a residual add', () => {
    const file = scriptedInPython('Activations', `
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.c = torch.nn.Conv2d(16, 16, 1, stride=2)
        self.fc = torch.nn.Linear(16 * 4 * 4, 12)
    def forward(self, x):
        y = torch.nn.functional.hardswish(self.a(x))
        z = torch.nn.functional.gelu(self.b(y)) + y
        z = torch.nn.functional.max_pool2d(z, 3, 2, 1, ceil_mode=True)
        z = torch.nn.functional.gelu(torch.nn.functional.avg_pool2d(self.c(z), 2, ceil_mode=True, count_include_pad=False), approximate='tanh')
        return torch.nn.functional.hardswish(self.fc(torch.flatten(z, 1)))`);
    const model = jit.load(file).eval();
    const chained = jit.optimizeForInference(model, { optimize: 'chains' });
    torch.manualSeed(4);
    for (const shape of [[1, 3, 29, 29], [3, 3, 29, 29]]) {
      const x = torch.randn(shape);
      expect(maxAbsDiff(chained.forward(x) as Tensor, eager(model, x))).toBeLessThanOrEqual(1e-4);
    }
    const primitives = chained.oneDnnChains()[0][0].primitives.map((p) => p.description);
    const convolutions = primitives.filter((line) => line.startsWith('convolution '));
    expect(convolutions).toHaveLength(3);
    expect(convolutions[0]).toMatch(/ 1x16x29x29 \+hardswish$/);
    // The residual is the convolution's own input, so it is a binary add, not a sum into it.
    expect(convolutions[1]).toMatch(/ 1x16x29x29 \+gelu \+add$/);
    expect(convolutions[2]).toMatch(/ 1x16x8x8$/);
    expect(primitives.filter((line) => /^(max pooling|average pooling|gelu_tanh) /.test(line))).toHaveLength(3);
    expect(primitives.filter((line) => line.startsWith('linear '))).toEqual([expect.stringMatching(/ 1x12 \+hardswish$/)]);
  });

  it('the layers whose weights oneDNN 3.7 misplaces in its reorder (a 1280-to-1000 linear layer, a 256-to-512 strided 1x1 convolution), on one and two threads', () => {
    // oneDNN 3.7 (LibTorch 2.6) lays these weights out for its brgemm kernels with a jit reorder
    // that gets some elements wrong (oneDNN issue 3280); the chains place them themselves there.
    const file = scriptedInPython('Classifier', `
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Conv2d(3, 256, 3, padding=1)
        self.down = torch.nn.Conv2d(256, 512, 1, stride=2)
        self.wide = torch.nn.Linear(512, 1280)
        self.fc = torch.nn.Linear(1280, 1000)
    def forward(self, x):
        y = torch.nn.functional.adaptive_avg_pool2d(self.down(torch.relu(self.a(x))), 1)
        return self.fc(torch.relu(self.wide(torch.flatten(y, 1))))`);
    const model = jit.load(file).eval();
    const threads = torch.getNumThreads();
    torch.manualSeed(5);
    const x = torch.randn([3, 3, 4, 4]);
    const expected = eager(model, x);
    try {
      for (const n of [1, 2]) {
        torch.setNumThreads(n);
        const chained = jit.optimizeForInference(model, { optimize: 'chains' });
        for (const rows of [1, 3]) {
          expect(maxAbsDiff(chained.forward(x.narrow(0, 0, rows)) as Tensor, expected.narrow(0, 0, rows))).toBeLessThanOrEqual(1e-4);
        }
      }
    } finally {
      torch.setNumThreads(threads);
    }
  });

  it('adaptive average pooling whose windows differ in size (10 to 4, 7 to 3, 3 to 4) is PyTorch\'s, in the backbone and in an exit\'s branch', () => {
    // PyTorch's output i averages inputs floor(i*in/out) to ceil((i+1)*in/out): windows of 3 and
    // 4 for 10 to 4, overlapping for 7 to 3, repeated for 3 to 4 and 2 to 3. No oneDNN pooling has them.
    const file = scriptedInPython('Uneven', `
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 3, 5)
    def forward(self, x):
        y = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.a(x)), (4, 3))
        return self.fc(torch.flatten(y, 1))`);
    const model = jit.load(file).eval();
    const chained = jit.optimizeForInference(model, { optimize: 'chains' });
    torch.manualSeed(8);
    for (const shape of [[1, 3, 10, 7], [2, 3, 8, 6], [1, 3, 3, 2]]) {
      const x = torch.randn(shape);
      expect(maxAbsDiff(chained.forward(x) as Tensor, eager(model, x))).toBeLessThanOrEqual(1e-4);
    }
    // One chain: the rank check TorchScript puts before a scripted adaptive_avg_pool2d
    // (`len(x.size()) > 2`, else raise) is dropped on the convolution's 4-D output.
    expect(chained.oneDnnChains()).toHaveLength(1);
    const plans = chained.oneDnnChains()[0];
    const described = (shape: string) => plans.find((plan) => plan.shape === shape)!.primitives.map((p) => p.description);
    // 10x7 to 4x3 and 3x2 to 4x3 are uneven: two matmuls; 8x6 to 4x3 divides: one pooling window.
    expect(described('1x3x10x7').filter((line) => line.startsWith('adaptive average pooling ('))).toHaveLength(2);
    expect(described('1x3x3x2').filter((line) => line.startsWith('adaptive average pooling ('))).toHaveLength(2);
    expect(described('2x3x8x6').filter((line) => line.startsWith('adaptive average pooling ('))).toHaveLength(0);
    expect(described('2x3x8x6').filter((line) => line.startsWith('average pooling '))).toHaveLength(1);

    // The same pooling in an exit's branch is written into the graph and joins the chain.
    torch.manualSeed(1);
    const exits = new EarlyExitModel(jit.load(fixture('mnist_cnn.pt')), [
      ['features1', nn.Sequential(nn.AdaptiveAvgPool2d([5, 3]), nn.Flatten(), nn.Linear(16 * 5 * 3, 10))],
    ]).eval();
    const x = torch.randn([2, 1, 28, 28]);
    const [exit0] = torch.noGrad(() => exits.forward(x));
    exits.optimizeForInference({ optimize: 'chains' });
    const stopped = exits.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0] });
    expect(stopped.exit).toBe(0);
    expect(maxAbsDiff(stopped.output, exit0)).toBeLessThanOrEqual(1e-4);
    const first = exits.backbone.oneDnnChains()[0].flatMap((plan) => plan.primitives.map((p) => p.description));
    expect(first.filter((line) => line.startsWith('adaptive average pooling ('))).toHaveLength(2);
    expect(first.filter((line) => /^linear .* 2x10$/.test(line))).toHaveLength(1);
  });

  it('MobileNetV2: ReLU6 is a post-op too; the depthwise convolutions are grouped ones', () => {
    const model = jit.load(fixture('mobilenet_v2_scripted.pt')).eval();
    const chained = jit.optimizeForInference(model, { optimize: 'chains' });
    const ref = reference('torchvision_reference.json');
    expect(maxAbsDiff(chained.forward(fromRef(ref.input)) as Tensor, ref.mobilenet_v2)).toBeLessThanOrEqual(1e-4);
    const convolutions = chained.oneDnnChains().flat().flatMap((plan) => plan.primitives.map((p) => p.description))
      .filter((line) => line.startsWith('convolution '));
    expect(convolutions).toHaveLength(52);
    expect(convolutions.filter((line) => line.endsWith('+clip'))).toHaveLength(35);
    expect(convolutions.filter((line) => line.includes('+add'))).toHaveLength(10);
  });

  it('per-sample exits: the samples that stay run on, each as it would alone and as the uncompiled model gives it', () => {
    const model = mnistTwoExits();
    const { x, outputs, thresholds, expected } = medianEntropySplit(model);
    model.optimizeForInference({ optimize: 'chains' });
    expect(model.inferenceOptimization).toBe('oneDNN chains');
    const result = model.forwardEarlyExit(x, { criterion: 'entropy', thresholds, perSample: true });
    expect(result.exits).toEqual(expected);
    for (let j = 0; j < x.shape[0]; j++) {
      const alone = model.forwardEarlyExit(x.narrow(0, j, 1), { criterion: 'entropy', thresholds, perSample: true });
      expect(alone.exits).toEqual([expected[j]]);
      expect(maxAbsDiff(result.output.narrow(0, j, 1), alone.output)).toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(result.output.select(0, j), outputs[expected[j]].select(0, j))).toBeLessThanOrEqual(1e-4);
    }
    // The chains after the first exit ran on the samples that stayed: a plan for that batch size too.
    const batches = new Set(model.backbone.oneDnnChains().flat().map((plan) => Number(plan.shape.split('x')[0])));
    const staying = (past: number) => expected.filter((exit) => exit > past).length;
    expect([...batches].sort((a, b) => a - b)).toEqual([...new Set([1, 16, staying(0), staying(1)])].sort((a, b) => a - b));
  });

  it('an exit\'s branch joins the chain before it, and gives what the uncompiled branch gives; a branch with another layer runs as a module', () => {
    const model = mnistTwoExits();
    torch.manualSeed(7);
    const x = torch.randn([3, 1, 28, 28]);
    const [exit0, exit1, final] = torch.noGrad(() => model.forward(x));
    model.optimizeForInference({ optimize: 'chains' });
    const stopped = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0, 0] });
    expect(stopped.exit).toBe(0);
    expect(maxAbsDiff(stopped.output, exit0)).toBeLessThanOrEqual(1e-4);
    expect(model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [null, 0] }).exit).toBe(1);
    expect(maxAbsDiff(model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [null, 0] }).output, exit1)).toBeLessThanOrEqual(1e-4);
    const all = model.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [null, null] });
    expect(all.exit).toBe(2);
    expect(maxAbsDiff(all.output, final)).toBeLessThanOrEqual(1e-4);
    // The branches' linear layers (784 and 3136 features to 10) run in the chains, one each.
    const lines = (m: EarlyExitModel) => m.backbone.oneDnnChains().map((chain) => chain.flatMap((plan) => plan.primitives.map((p) => p.description)));
    const branchLayers = lines(model).map((chain) => chain.filter((line) => /^linear .* 3x10$/.test(line)).length);
    expect(branchLayers[0]).toBe(1); // the first exit's, in the chain of the layers before it
    expect(branchLayers.reduce((a, b) => a + b, 0)).toBe(3); // the second exit's and the model's own classifier
    model.leaveInferenceMode();

    // Tanh is not a layer the compiler writes into the graph: that branch runs as a module.
    torch.manualSeed(0);
    const other = new EarlyExitModel(jit.load(fixture('mnist_cnn.pt')), [
      ['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10), nn.Tanh())],
    ]).eval();
    const [otherExit] = torch.noGrad(() => other.forward(x));
    other.optimizeForInference({ optimize: 'chains' });
    const otherStopped = other.forwardEarlyExit(x, { criterion: 'maxProbability', thresholds: [0] });
    expect(otherStopped.exit).toBe(0);
    expect(maxAbsDiff(otherStopped.output, otherExit)).toBeLessThanOrEqual(1e-5);
    // No chain ran a 3x10 linear layer: the stop came before the classifier's chain was ever planned.
    expect(lines(other).flat().filter((line) => /^linear .* 3x10$/.test(line))).toHaveLength(0);
    expect(lines(other)[0].length).toBeGreaterThan(0);
  });

  it('profileOneDnnChains: every primitive timed, their sum within the forward\'s whole time', () => {
    const chained = jit.optimizeForInference(jit.load(fixture('resnet20_scripted.pt')).eval(), { optimize: 'chains' });
    const x = torch.randn([1, 3, 32, 32]);
    const profile = chained.profileOneDnnChains(() => chained.forward(x), { runs: 20, warmup: 2 });
    expect(profile.runs).toBe(20);
    const primitives = profile.chains[0][0].primitives;
    for (const primitive of primitives) {
      expect(primitive.runs).toBe(20);
      expect(primitive.meanMs).toBeGreaterThan(0);
    }
    const sum = primitives.reduce((total, p) => total + p.meanMs!, 0);
    expect(profile.kernelMs).toBeCloseTo(sum, 6);
    expect(profile.kernelMs).toBeLessThan(profile.forwardMs);
    expect(profile.otherMs).toBeCloseTo(profile.forwardMs - profile.kernelMs, 9);
    // Timing is off again: later runs leave the counts as they were.
    chained.forward(x);
    expect(chained.oneDnnChains()[0][0].primitives[0].runs).toBe(20);
    expect(jit.optimizeForInference(jit.load(fixture('resnet20_scripted.pt')).eval(), { optimize: false }).oneDnnChains()).toEqual([]);
  });

  it('refuses what it cannot run, saying what and where', () => {
    const resnet = jit.optimizeForInference(jit.load(fixture('resnet20_scripted.pt')).eval(), { optimize: 'chains' });
    expect(() => resnet.forward(torch.randn([1, 3, 32, 32]).to('float64'))).toThrow(/oneDNN chain: input 0 is Double on cpu: chains run float32 on the CPU/);
    // Too small for the average pooling's 8 x 8 window (LibTorch refuses it too).
    expect(() => resnet.forward(torch.randn([1, 3, 16, 16]))).toThrow(/oneDNN chain: aten::avg_pool2d \(%\S+\): its 1x64x4x4 input is smaller than its window/);
    // A branch written into the graph that does not fit its exit point: the chain names the branch.
    const misfit = new EarlyExitModel(jit.load(fixture('mnist_cnn.pt')), [['features1', nn.Sequential(nn.Flatten(), nn.Linear(7, 10))]]).eval();
    misfit.optimizeForInference({ optimize: 'chains' });
    expect(() => misfit.forwardEarlyExit(torch.randn([2, 1, 28, 28]), { criterion: 'maxProbability', thresholds: [0] }))
      .toThrow(/oneDNN chain: aten::linear \(%\S+\) in the branch hooked on 'features1': its input has 3136 features, its weights expect 7/);
    // The text encoder's linear layers read 3-D sequences, which oneDNN's inner product does not take.
    const text = jit.load(fixture('text_encoder_scripted.pt')).eval();
    expect(() => jit.optimizeForInference(text, { optimize: 'chains' }))
      .toThrow(/optimize: 'chains' cannot apply: the model has no convolution or linear layer with float32 CPU weights to build a oneDNN chain around/);
    expect(jit.optimizeForInference(text).inferenceOptimization).not.toBe('oneDNN chains');
  });
});
