import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EarlyExitModel, Tensor, earlyExitLoss, jit, loadCheckpoint, lossWeightSchedule, nn, optim, saveCheckpoint, torch } from '../lib';
import { fixture, fromRef, maxAbsDiff, python, reference, seedBranch } from './helpers';

const F = nn.functional;
const training = () => reference('training_reference.json');
const resnet = () => reference('resnet20_reference.json');

function tmpdir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tee-train-'));
}

describe('autograd', () => {
  it('backward fills grad of the leaves with the derivative', () => {
    const x = torch.tensor([1, 2, 3], { dtype: 'float32', requiresGrad: true });
    x.mul(x).sum().backward();
    expect(x.grad!.toArray()).toEqual([2, 4, 6]);
    x.mul(3).sum().backward();
    expect(x.grad!.toArray()).toEqual([5, 7, 9]);
    x.grad = null;
    expect(x.grad).toBeNull();
    expect(() => { x.grad = torch.ones([2]); }).toThrow('assigned grad has data of a different size: [2] for a tensor of [3]');
  });

  it('backward takes a gradient for non-scalar outputs, and refuses to go without one', () => {
    const x = torch.tensor([1, 2], { dtype: 'float32', requiresGrad: true });
    x.mul(2).backward(torch.tensor([1, 10], { dtype: 'float32' }));
    expect(x.grad!.toArray()).toEqual([2, 20]);
    expect(() => x.mul(2).backward()).toThrow(/grad can be implicitly created only for scalar outputs/);
  });

  it('noGrad and detach cut the graph', () => {
    const x = torch.ones([2], { requiresGrad: true });
    expect(torch.noGrad(() => x.mul(2)).requiresGrad).toBe(false);
    expect(x.mul(2).detach().requiresGrad).toBe(false);
    expect(() => x.detach().sum().backward()).toThrow(/does not require grad/);
  });
});

describe('losses and accuracy', () => {
  const logits = () => torch.tensor([[2, 1, 0.1], [0.5, 2.5, 0.3]], { dtype: 'float64' });
  const target = () => torch.tensor([0, 2]);
  const logProb = (row: number[], k: number) => row[k] - Math.log(row.reduce((s, v) => s + Math.exp(v), 0));

  it('crossEntropy equals -log softmax at the target, with every reduction', () => {
    const rows = [[2, 1, 0.1], [0.5, 2.5, 0.3]];
    const each = [-logProb(rows[0], 0), -logProb(rows[1], 2)];
    expect((F.crossEntropy(logits(), target(), { reduction: 'none' }).toArray() as number[])).toEqual(each.map((v) => expect.closeTo(v, 12)));
    expect(F.crossEntropy(logits(), target()).item()).toBeCloseTo((each[0] + each[1]) / 2, 12);
    expect(F.crossEntropy(logits(), target(), { reduction: 'sum' }).item()).toBeCloseTo(each[0] + each[1], 12);
    expect(() => F.crossEntropy(logits(), target(), { reduction: 'avg' as never })).toThrow(/reduction must be/);
  });

  it('label smoothing mixes in the uniform distribution, as PyTorch', () => {
    const rows = [[2, 1, 0.1], [0.5, 2.5, 0.3]];
    const eps = 0.1;
    const expected = rows.map((row, i) => {
      const k = [0, 2][i];
      const uniform = -[0, 1, 2].reduce((s, j) => s + logProb(row, j), 0) / 3;
      return (1 - eps) * -logProb(row, k) + eps * uniform;
    });
    expect(F.crossEntropy(logits(), target(), { labelSmoothing: eps }).item()).toBeCloseTo((expected[0] + expected[1]) / 2, 12);
  });

  it('nllLoss and mseLoss', () => {
    expect(F.nllLoss(logits().logSoftmax(1), target()).item()).toBeCloseTo(F.crossEntropy(logits(), target()).item() as number, 12);
    expect(F.mseLoss(torch.tensor([1, 2], { dtype: 'float32' }), torch.tensor([3, 2], { dtype: 'float32' })).item()).toBe(2);
  });

  it('counts top-k hits and accuracy', () => {
    const out = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]]);
    const y = torch.tensor([2, 0, 0]);
    expect(F.topkCorrect(out, y, [1, 2, 5])).toEqual([1, 2, 3]);
    expect(F.accuracy(out, y, [1])[0]).toBeCloseTo(100 / 3, 10);
  });
});

describe('earlyExitLoss', () => {
  const y = torch.tensor([1, 0]);
  const exit0 = torch.tensor([[0.2, 0.9], [1.5, -0.5]], { dtype: 'float64' });
  const exit1 = torch.tensor([[0.1, 0.3], [0.4, 0.2]], { dtype: 'float64' });
  const final = torch.tensor([[-1, 2], [3, 1]], { dtype: 'float64' });
  const ce = (o: Tensor) => F.crossEntropy(o, y).item() as number;

  it("is Distiller's weighted sum", () => {
    const loss = earlyExitLoss([exit0, exit1, final], y, [0.2, 0.3]).item() as number;
    expect(loss).toBeCloseTo(0.2 * ce(exit0) + 0.3 * ce(exit1) + 0.5 * ce(final), 12);
  });

  it('skips an exit without output, keeping its weight out of the final share', () => {
    const loss = earlyExitLoss([null, exit1, final], y, [0.2, 0.3]).item() as number;
    expect(loss).toBeCloseTo(0.3 * ce(exit1) + 0.5 * ce(final), 12);
  });

  it('refuses weights that do not sum below 1, or that do not match the exits', () => {
    expect(() => earlyExitLoss([exit0, exit1, final], y, [0.5, 0.5])).toThrow(
      "the exits' loss weights must sum to less than 1 (the final exit gets 1 - sum), got 1 from [0.5,0.5]");
    expect(() => earlyExitLoss([exit0, final], y, [0.2, 0.3])).toThrow(/one loss weight per exit: 1 exit\(s\), 2 weight\(s\)/);
    expect(() => earlyExitLoss([exit0, final], y, [-0.1])).toThrow(/non-negative/);
  });

  it('distills each exit from the softened final output', () => {
    const T = 2;
    const alpha = 0.4;
    const teacher = final.div(T).softmax(1).toArray() as number[][];
    const student = exit0.div(T).logSoftmax(1).toArray() as number[][];
    let kl = 0;
    teacher.forEach((row, i) => row.forEach((p, j) => { kl += p * (Math.log(p) - student[i][j]); }));
    kl /= 2;
    const expected = 0.3 * ((1 - alpha) * ce(exit0) + alpha * T * T * kl) + 0.7 * ce(final);
    const loss = earlyExitLoss([exit0, final], y, [0.3], { distillation: { temperature: T, alpha } }).item() as number;
    expect(loss).toBeCloseTo(expected, 12);
  });

  it('distillation gradients do not reach the final output', () => {
    const f = final.clone().requiresGrad_();
    earlyExitLoss([exit0, f], y, [0.3], { distillation: { temperature: 2, alpha: 1 } }).backward();
    const direct = final.clone().requiresGrad_();
    F.crossEntropy(direct, y).mul(0.7).backward();
    expect(maxAbsDiff(f.grad!, direct.grad!)).toBeLessThanOrEqual(1e-12);
  });

  it('loss weights can follow a schedule', () => {
    const schedule = lossWeightSchedule([[0, [0.1, 0.1]], [100, [0.3, 0.5]]]);
    expect(schedule(-5)).toEqual([0.1, 0.1]);
    expect(schedule(50)[0]).toBeCloseTo(0.2, 12);
    expect(schedule(50)[1]).toBeCloseTo(0.3, 12);
    expect(schedule(1000)).toEqual([0.3, 0.5]);
    expect(() => lossWeightSchedule([[0, [0.6, 0.6]]])).toThrow(/sum to less than 1/);
  });
});

describe('optimizers equal torch.optim on the same gradients', () => {
  const ref = () => reference('optimizer_reference.json');
  const cases: Array<[string, (p: Tensor[]) => optim.Optimizer]> = [
    ['sgd', (p) => new optim.SGD(p, { lr: 0.1 })],
    ['sgd_momentum_dampening', (p) => new optim.SGD(p, { lr: 0.1, momentum: 0.8, dampening: 0.3, weightDecay: 0.01 })],
    ['sgd_nesterov', (p) => new optim.SGD(p, { lr: 0.1, momentum: 0.9, nesterov: true })],
    ['adam', (p) => new optim.Adam(p, { lr: 0.01 })],
    ['adam_weight_decay', (p) => new optim.Adam(p, { lr: 0.01, betas: [0.8, 0.99], weightDecay: 0.1 })],
    ['adamw', (p) => new optim.AdamW(p, { lr: 0.01 })],
  ];
  it.each(cases)('%s', (name, make) => {
    const param = fromRef(ref().start).requiresGrad_();
    const optimizer = make([param]);
    for (const grad of ref().grads) {
      param.grad = fromRef(grad);
      optimizer.step();
    }
    expect(maxAbsDiff(param, ref().results[name])).toBeLessThanOrEqual(1e-6);
  });

  it('parameter groups keep their own learning rate; lr can change between steps', () => {
    const a = torch.ones([1], { requiresGrad: true });
    const b = torch.ones([1], { requiresGrad: true });
    const optimizer = new optim.SGD([{ params: [a] }, { params: [b], lr: 0.5 }], { lr: 0.1 });
    a.grad = torch.ones([1]);
    b.grad = torch.ones([1]);
    optimizer.step();
    expect(a.item()).toBeCloseTo(0.9, 6);
    expect(b.item()).toBeCloseTo(0.5, 6);
    optimizer.paramGroups[0].lr = 1;
    optimizer.step();
    expect(a.item()).toBeCloseTo(-0.1, 6);
    optimizer.zeroGrad();
    expect(a.grad).toBeNull();
  });

  // The optimizers run multi-tensor ops over all the parameters of a group at once; PyTorch's
  // single-tensor arithmetic, written out here one tensor at a time, must give the same bits,
  // also when the parameters' histories differ (one has no gradient at some steps).
  it.each([
    ['SGD', (p: Tensor[]) => new optim.SGD(p, { lr: 0.1, momentum: 0.8, dampening: 0.3, weightDecay: 0.01 })],
    ['SGD nesterov maximize', (p: Tensor[]) => new optim.SGD(p, { lr: 0.1, momentum: 0.9, nesterov: true, maximize: true })],
    ['Adam', (p: Tensor[]) => new optim.Adam(p, { lr: 0.01, betas: [0.9, 0.99], weightDecay: 0.1 })],
    ['AdamW', (p: Tensor[]) => new optim.AdamW(p, { lr: 0.01 })],
  ] as Array<[string, (p: Tensor[]) => optim.Optimizer]>)('%s over several tensors equals the per-tensor arithmetic bit for bit', (name, make) => {
    torch.manualSeed(3);
    const shapes = [[3, 4], [7], [2, 2, 2]];
    const params = shapes.map((shape) => torch.randn(shape).requiresGrad_());
    const mine = params.map((p) => p.detach().clone());
    const grads = Array.from({ length: 4 }, () => shapes.map((shape) => torch.randn(shape)));
    const optimizer = make(params);
    const group = optimizer.paramGroups[0] as Record<string, unknown>;
    const state: Array<Record<string, Tensor | number>> = shapes.map(() => ({}));
    grads.forEach((stepGrads, s) => {
      params.forEach((p, i) => { p.grad = s === 1 && i === 1 ? null : stepGrads[i].clone(); });
      optimizer.step();
      torch.noGrad(() => mine.forEach((param, i) => {
        if (s === 1 && i === 1) return;
        const st = state[i];
        let g = group.maximize ? stepGrads[i].neg() : stepGrads[i];
        if (name.startsWith('SGD')) {
          const { lr, momentum, dampening, weightDecay, nesterov } = group as { lr: number; momentum: number; dampening: number; weightDecay: number; nesterov: boolean };
          if (weightDecay !== 0) g = g.add(param, weightDecay);
          if (st.buf === undefined) st.buf = g.clone();
          else (st.buf as Tensor).mul_(momentum).add_(g, 1 - dampening);
          g = nesterov ? g.add(st.buf as Tensor, momentum) : st.buf as Tensor;
          param.add_(g, -lr);
        } else {
          const { lr, betas: [b1, b2], eps, weightDecay } = group as { lr: number; betas: number[]; eps: number; weightDecay: number };
          st.step = ((st.step as number | undefined) ?? 0) + 1;
          st.m ??= torch.zeros(shapes[i]);
          st.v ??= torch.zeros(shapes[i]);
          if (name === 'AdamW') param.mul_(1 - lr * weightDecay);
          else g = g.add(param, weightDecay);
          (st.m as Tensor).mul_(b1).add_(g, 1 - b1);
          (st.v as Tensor).mul_(b2).addcmul_(g, g, 1 - b2);
          // Python's float ** is the C library's pow, as the native step's; a float64 tensor's
          // pow is that pow too (V8's ** can differ in a double's last bit, 0.9 ** 3 for one).
          const pow = (base: number, exponent: number) => torch.tensor([base], { dtype: 'float64' }).pow(exponent).item() as number;
          const denom = (st.v as Tensor).sqrt().div(Math.sqrt(1 - pow(b2, st.step))).add_(eps);
          param.addcdiv_(st.m as Tensor, denom, -lr / (1 - pow(b1, st.step)));
        }
      }));
    });
    params.forEach((p, i) => expect(maxAbsDiff(p, mine[i])).toBe(0));
  });

  it('skips parameters without a gradient (frozen ones)', () => {
    const frozen = torch.ones([2]);
    const optimizer = new optim.SGD([frozen], { lr: 0.1, momentum: 0.9 });
    optimizer.step();
    expect(frozen.toArray()).toEqual([1, 1]);
    expect(optimizer.state.size).toBe(0);
  });

  it('refuses bad settings', () => {
    expect(() => new optim.SGD([torch.ones([1])], { lr: -1 })).toThrow(/invalid learning rate: -1/);
    expect(() => new optim.SGD([], { lr: 1 })).toThrow(/empty parameter list/);
    expect(() => new optim.SGD([torch.ones([1])], { lr: 1, nesterov: true })).toThrow(/Nesterov momentum requires a momentum/);
  });

  it('step and cosine schedulers set the learning rate as PyTorch', () => {
    const opt1 = new optim.SGD([torch.ones([1])], { lr: 1 });
    const step = new optim.StepLR(opt1, 2, 0.5);
    const seen: number[] = [];
    for (let i = 0; i < 5; i++) { step.step(); seen.push(step.getLastLr()[0]); }
    expect(seen).toEqual([1, 0.5, 0.5, 0.25, 0.25]);
    const opt2 = new optim.SGD([torch.ones([1])], { lr: 0.1 });
    const cosine = new optim.CosineAnnealingLR(opt2, 4, 0.01);
    const lrs: number[] = [];
    for (let i = 0; i < 4; i++) { cosine.step(); lrs.push(cosine.getLastLr()[0]); }
    lrs.forEach((lr, i) => expect(lr).toBeCloseTo(0.01 + 0.09 * (1 + Math.cos(Math.PI * (i + 1) / 4)) / 2, 12));
  });
});

describe("training steps equal PyTorch's", () => {
  function train(frozen: boolean): EarlyExitModel {
    const settings = training().settings;
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]);
    model.freezeBackbone(frozen).train();
    const optimizer = new optim.SGD(model.parameters(), { lr: settings.lr, momentum: settings.momentum, weightDecay: settings.weightDecay });
    const x = fromRef(training().input);
    const y = fromRef(training().target);
    const losses: number[] = [];
    for (let i = 0; i < settings.steps; i++) {
      const loss = earlyExitLoss(model.forward(x), y, settings.lossWeights);
      optimizer.zeroGrad();
      loss.backward();
      optimizer.step();
      losses.push(loss.item() as number);
    }
    const scenario = training().scenarios[frozen ? 'exits_only' : 'joint'];
    losses.forEach((loss, i) => expect(loss).toBeCloseTo(scenario.losses[i], 5));
    return model;
  }

  it.each([['joint', false], ['exits only, frozen backbone', true]] as const)('%s: parameters after two SGD steps', (_, frozen) => {
    const model = train(frozen);
    const scenario = training().scenarios[frozen ? 'exits_only' : 'joint'];
    const named = model.namedParameters();
    expect(named.map(([name]) => name).sort()).toEqual(Object.keys(scenario.parameters).sort());
    let worst = 0;
    for (const [name, param] of named) worst = Math.max(worst, maxAbsDiff(param, scenario.parameters[name]));
    expect(worst).toBeLessThanOrEqual(1e-4);
    const runningMean = model.backbone.getModule('layer3.2.bn2').namedBuffers()[0][1];
    expect(maxAbsDiff(runningMean, scenario.running_mean)).toBeLessThanOrEqual(1e-4);
    if (frozen) {
      const initial = resnet().named_parameters;
      for (const [name, param] of model.backbone.namedParameters()) expect(maxAbsDiff(param, initial[name])).toBe(0);
    }
  });
});

describe('checkpoints', () => {
  const x = () => fromRef(training().input);
  const y = () => fromRef(training().target);

  function step(model: EarlyExitModel, optimizer: optim.Optimizer): void {
    const loss = earlyExitLoss(model.forward(x()), y(), [0.3]);
    optimizer.zeroGrad();
    loss.backward();
    optimizer.step();
  }

  it('resume training exactly where it stopped', () => {
    const make = () => new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]).train();
    const straight = make();
    const optStraight = new optim.SGD(straight.parameters(), { lr: 0.05, momentum: 0.9 });
    for (let i = 0; i < 3; i++) step(straight, optStraight);

    const first = make();
    const optFirst = new optim.SGD(first.parameters(), { lr: 0.05, momentum: 0.9 });
    step(first, optFirst);
    const dir = path.join(tmpdir(), 'ckpt');
    saveCheckpoint(dir, first, { optimizer: optFirst, epoch: 1, extra: { note: 'one step' } });

    const loaded = loadCheckpoint(dir);
    expect(loaded.epoch).toBe(1);
    expect(loaded.extra).toEqual({ note: 'one step' });
    expect(loaded.model.exitPoints).toEqual(['layer1.2.relu2']);
    const resumed = loaded.model.train();
    const optResumed = new optim.SGD(resumed.parameters(), { lr: 0.05, momentum: 0.9 });
    optResumed.loadStateDict(loaded.optimizerState!);
    for (let i = 0; i < 2; i++) step(resumed, optResumed);

    const expected = straight.namedParameters();
    const got = resumed.namedParameters();
    expect(got.map(([n]) => n)).toEqual(expected.map(([n]) => n));
    got.forEach(([, p], i) => expect(maxAbsDiff(p, expected[i][1])).toBeLessThanOrEqual(1e-6));
  });

  it("Python reads the backbone, the branch state dict and the optimizer's tensors", () => {
    const model = new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]);
    const optimizer = new optim.SGD(model.parameters(), { lr: 0.05, momentum: 0.9 });
    step(model.train(), optimizer);
    const dir = path.join(tmpdir(), 'ckpt');
    saveCheckpoint(dir, model, { optimizer });
    const out = python(`import torch, json
from torch import nn
branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))
branch.load_state_dict(torch.load(${JSON.stringify(path.join(dir, 'exit-0.pt'))}))
backbone = torch.jit.load(${JSON.stringify(path.join(dir, 'backbone.pt'))})
opt = torch.load(${JSON.stringify(path.join(dir, 'optimizer.pt'))})
print(json.dumps({"bias": branch[2].bias.tolist(), "fc": backbone.fc.bias.tolist(), "keys": len(opt)}))`);
    const result = JSON.parse(out);
    const branch = model.branches[0] as nn.Sequential;
    expect(maxAbsDiff(branch.stateDict()['2.bias'], result.bias)).toBe(0);
    expect(maxAbsDiff(model.backbone.getModule('fc').namedParameters()[1][1], result.fc)).toBe(0);
    expect(result.keys).toBe(model.parameters().length);
  });

  it('torch.save writes what torch.load reads, both ways with Python', () => {
    const file = path.join(tmpdir(), 'state.pt');
    torch.save({ w: torch.tensor([[1, 2]], { dtype: 'float32' }), n: 3 }, file);
    const back = torch.load(file);
    expect(back.w.toArray()).toEqual([[1, 2]]);
    expect(back.n).toBe(3);
    const fromPython = path.join(tmpdir(), 'py.pt');
    python(`import torch; torch.save({"a": torch.arange(4).reshape(2, 2).float(), "b": torch.ones(1)}, ${JSON.stringify(fromPython)})`);
    expect(torch.load(fromPython).a.toArray()).toEqual([[0, 1], [2, 3]]);
    const stateDict = path.join(tmpdir(), 'sd.pt');
    // The form every PyTorch tutorial writes: an OrderedDict with _metadata.
    const weights = JSON.parse(python(`import torch, json; torch.manual_seed(0); m = torch.nn.Linear(3, 2); ` +
      `torch.save(m.state_dict(), ${JSON.stringify(stateDict)}); print(json.dumps(m.weight.tolist()))`));
    const loaded = torch.load(stateDict);
    expect(Object.keys(loaded)).toEqual(['weight', 'bias']);
    expect(loaded.weight.toArray()).toEqual(weights);
    expect(() => torch.load('/no/such.pt')).toThrow("torch.load: no such file '/no/such.pt'");
    expect(() => loadCheckpoint(tmpdir())).toThrow(/checkpoint.json is missing/);
  });
});
