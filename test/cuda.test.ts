/**
 * Early exits on a CUDA device, against the same model run on the CPU: the forward with its
 * exits, a stop at an exit, per-sample exits inside a batch, and a training step. Each
 * reference is the CPU run of the same weights and inputs, so the two devices must agree to
 * float32 tolerance (cuDNN's convolutions sum in another order), with TF32 off so that cuDNN
 * keeps float32 inputs (torch.backends.cudnn.allowTF32). Skipped where LibTorch sees no
 * CUDA device, as on CI's machines; the GPU machine some sessions are lent runs it against a
 * pip PyTorch built with CUDA.
 */
import { EarlyExitModel, Tensor, earlyExitLoss, exitScores, jit, nn, optim, torch } from '../lib';
import { fixture, fromRef, maxAbsDiff, reference, seedBranch } from './helpers';

const cudaIt = torch.cuda.isAvailable() ? it : it.skip;
const resnet = () => reference('resnet20_reference.json');

function seedModel(device: 'cpu' | 'cuda'): EarlyExitModel {
  return new EarlyExitModel(jit.load(fixture('resnet20_scripted.pt')), [['layer1.2.relu2', seedBranch()]]).to(device).eval();
}

describe('early exits on CUDA', () => {
  beforeAll(() => { torch.backends.cudnn.allowTF32 = false; });
  afterAll(() => { torch.backends.cudnn.allowTF32 = true; });

  cudaIt("gives the CPU's exit and final outputs, on the device", () => {
    const x = fromRef(resnet().input);
    const [cpuExit, cpuFinal] = torch.noGrad(() => seedModel('cpu').forward(x));
    const [exit0, final] = torch.noGrad(() => seedModel('cuda').forward(x.cuda())) as Tensor[];
    expect([exit0.device, final.device]).toEqual(['cuda:0', 'cuda:0']);
    expect(maxAbsDiff(exit0.cpu(), cpuExit as Tensor)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(final.cpu(), cpuFinal as Tensor)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(final.cpu(), resnet().exit.final_output)).toBeLessThanOrEqual(1e-4);
  });

  cudaIt('stops at an exit every sample meets, and lets each sample leave at its own exit in a batch', async () => {
    const x = fromRef(resnet().input);
    const cpu = seedModel('cpu');
    const cuda = seedModel('cuda');
    const stopped = cuda.forwardEarlyExit(x.cuda(), { criterion: 'maxProbability', thresholds: [0] });
    expect(stopped.exit).toBe(0);
    expect(maxAbsDiff(stopped.output.cpu(), resnet().exit.exit_output)).toBeLessThanOrEqual(1e-4);
    // A threshold between the samples' scores splits the batch: the CPU decides who leaves.
    const [maxP] = exitScores(torch.noGrad(() => cpu.forward(x)), 'maxProbability');
    const sorted = [...maxP].sort((a, b) => a - b);
    const between = (sorted[Math.floor(sorted.length / 2) - 1] + sorted[Math.floor(sorted.length / 2)]) / 2;
    const expected = maxP.map((p) => (p >= between ? 0 : 1));
    expect(new Set(expected).size).toBe(2);
    for (const result of [cuda.forwardEarlyExit(x.cuda(), { criterion: 'maxProbability', thresholds: [between], perSample: true }),
      await cuda.forwardEarlyExitAsync(x.cuda(), { criterion: 'maxProbability', thresholds: [between], perSample: true })]) {
      expect(result.exits).toEqual(expected);
      expect(result.output.device).toBe('cuda:0');
      const rows = [resnet().exit.exit_output, resnet().exit.final_output].map(fromRef);
      expected.forEach((exit, j) => expect(maxAbsDiff(result.output.cpu().select(0, j), rows[exit].select(0, j))).toBeLessThanOrEqual(1e-4));
    }
  });

  cudaIt("takes the CPU's training step: same loss, same updated exit weights", () => {
    const x = fromRef(resnet().input);
    const labels = torch.tensor(new BigInt64Array(x.shape[0]).map((_, i) => BigInt(i % 10)));
    const step = (device: 'cpu' | 'cuda'): { loss: number; weight: Tensor } => {
      const model = seedModel(device).freezeBackbone().train();
      const optimizer = new optim.SGD(model.parameters(), { lr: 0.1, momentum: 0.9 });
      const input = device === 'cuda' ? x.cuda() : x;
      const target = device === 'cuda' ? labels.cuda() : labels;
      const loss = earlyExitLoss(model.forward(input), target, [0.3]);
      optimizer.zeroGrad();
      loss.backward();
      optimizer.step();
      const weight = (model.branches[0] as nn.Sequential).stateDict()['2.weight'];
      return { loss: loss.item() as number, weight: weight.detach().cpu() };
    };
    const cpu = step('cpu');
    const cuda = step('cuda');
    expect(Math.abs(cuda.loss - cpu.loss)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(cuda.weight, cpu.weight)).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(cuda.weight, fromRef(resnet().exit.branch_state_dict['2.weight']))).toBeGreaterThan(0);
  });
});
