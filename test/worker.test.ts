import * as path from 'path';
import { Worker } from 'worker_threads';
import { fixture, reference } from './helpers';

describe('worker_threads', () => {
  it('loads the addon in a worker, next to the main thread, and runs an early-exit forward there', async () => {
    const ref = reference('resnet20_reference.json');
    const lib = path.join(__dirname, '..', 'dist', 'lib');
    const code = `
      const { parentPort, workerData } = require('worker_threads');
      const { jit, nn, torch, EarlyExitModel } = require(workerData.lib);
      const model = new EarlyExitModel(jit.load(workerData.model), [
        ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]).eval();
      const x = torch.tensor(new Float32Array(workerData.input.data), { shape: workerData.input.shape });
      const [exit0, final] = torch.noGrad(() => model.forward(x));
      parentPort.postMessage({ exit: exit0.shape, final: Array.from(final.data()) });`;
    const runWorker = () => new Promise<{ exit: number[]; final: number[] }>((resolve, reject) => {
      const worker = new Worker(code, { eval: true, workerData: { lib, model: fixture('resnet20_scripted.pt'), input: ref.input } });
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    const [a, b] = await Promise.all([runWorker(), runWorker()]);
    for (const result of [a, b]) {
      expect(result.exit).toEqual([2, 10]);
      const worst = Math.max(...result.final.map((v, i) => Math.abs(v - ref.output.data[i])));
      expect(worst).toBeLessThanOrEqual(1e-5);
    }
  });
});
