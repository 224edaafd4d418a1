import { EarlyExitModel, evaluateAccuracy, jit, loadMnist, nn, shapeDigits, torch, trainEarlyExit } from '../lib';
import * as path from 'path';

const MODEL = path.join(__dirname, '..', 'models', 'mnist_cnn.pt');

describe('training exits on the real MNIST digits of the mnist package', () => {
  it('splits the 10,000 digits the same way for the same seed', () => {
    const a = loadMnist({ train: 100, test: 50, seed: 7 });
    const b = loadMnist({ train: 100, test: 50, seed: 7 });
    const c = loadMnist({ train: 100, test: 50, seed: 8 });
    expect(a.train.images.shape).toEqual([100, 1, 28, 28]);
    expect(a.test.labels.shape).toEqual([50]);
    expect(a.train.labels.toArray()).toEqual(b.train.labels.toArray());
    expect(a.train.labels.toArray()).not.toEqual(c.train.labels.toArray());
    expect(new Set(a.train.labels.toArray() as number[]).size).toBe(10);
    expect(() => loadMnist({ train: 9000, test: 2000 })).toThrow(/has 10000 digits; asked for 9000 \+ 2000/);
  });

  it('shapes digits for RGB, CIFAR-shaped models: three copies of each, zeros around, the digit in the middle', () => {
    const { train } = loadMnist({ train: 5, test: 0, seed: 4 });
    const shaped = shapeDigits(train.images, { channels: 3, size: 33 });
    expect(shaped.shape).toEqual([5, 3, 33, 33]);
    // 5 columns and rows of padding: 2 before, 3 after.
    for (let c = 0; c < 3; c++) {
      expect(shaped.narrow(1, c, 1).narrow(2, 2, 28).narrow(3, 2, 28).sub(train.images).abs().max().item()).toBe(0);
    }
    // Everything around the digit is zero: the rows above and below, the columns left and right.
    for (const [dim, start, length] of [[2, 0, 2], [2, 30, 3], [3, 0, 2], [3, 30, 3]]) {
      expect(shaped.narrow(dim, start, length).abs().max().item()).toBe(0);
    }
    expect(shapeDigits(train.images).shape).toEqual([5, 1, 28, 28]);
    expect(() => shapeDigits(train.images, { size: 20 })).toThrow('size must be an integer of at least 28, got 20');
  });

  it('reaches >= 97% at the final exit and >= 90% at the early exit on 2,000 held-out digits', () => {
    torch.setNumThreads(1);
    const { train, test } = loadMnist({ train: 8000, test: 2000, seed: 0 });
    const model = new EarlyExitModel(jit.load(MODEL), [
      ['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))],
    ]);
    const before = evaluateAccuracy(model, test);
    expect(Math.max(...before)).toBeLessThan(30);
    const accuracy = trainEarlyExit(model, train, { epochs: 4, lossWeights: [0.3], seed: 0, validation: test })!;
    console.log(`MNIST held-out accuracy after 4 epochs: exit ${accuracy[0]}%, final ${accuracy[1]}%`);
    expect(accuracy[1]).toBeGreaterThanOrEqual(97);
    expect(accuracy[0]).toBeGreaterThanOrEqual(90);
    expect(evaluateAccuracy(model, test)).toEqual(accuracy);
  });
});
