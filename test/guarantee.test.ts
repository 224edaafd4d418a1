/**
 * Thresholds with a guarantee (Learn-then-Test): the binomial tail and Clopper–Pearson bound
 * against closed forms and exact sums, and the certified thresholds on outputs built so that
 * the answer is known in advance.
 */
import {
  EarlyExitModel, HeldOutOutputs, WordTokenizer, calibrateThresholds, collectOutputs, emailLabels, exitDecisions, exitScores, jit,
  loadMnist, loadSpamAssassin, nn, splitEmails, torch, trainEarlyExit,
} from '../lib';
import * as path from 'path';
import { binomialCdf, binomialUpperBound, guaranteeSequence } from '../lib/early-exit/guarantee';
import { fixture } from './helpers';

/** Two-class logits [a, 0] whose softmax entropy is `h` (0 < h < ln 2). */
function logitForEntropy(h: number): number {
  const entropy = (p: number) => -(p * Math.log(p) + (1 - p) * Math.log(1 - p));
  let low = 0.5;
  let high = 1 - 1e-12;
  for (let i = 0; i < 200; i++) {
    const p = (low + high) / 2;
    if (entropy(p) > h) low = p; else high = p;
  }
  const p = (low + high) / 2;
  return Math.log(p / (1 - p));
}

/**
 * One exit and the final output over `n` samples of label 0. The final output is always
 * right; the exit is right and very sure on every sample but those `wrong` entropies, at
 * which it predicts class 1.
 */
function heldOut(n: number, wrong: number[], sure = 1e-5) {
  const exit: number[] = [];
  const final: number[] = [];
  for (let j = 0; j < n; j++) {
    const h = j < wrong.length ? wrong[j] : sure;
    const a = logitForEntropy(h);
    exit.push(...(j < wrong.length ? [0, a] : [a, 0]));
    final.push(10, -10);
  }
  return {
    outputs: [torch.tensor(exit, { shape: [n, 2] }), torch.tensor(final, { shape: [n, 2] })],
    labels: torch.tensor(new BigInt64Array(n), { shape: [n] }),
  };
}

describe('calibrateThresholds with a guarantee (Learn-then-Test)', () => {
  it('computes the binomial tail and the Clopper–Pearson bound exactly', () => {
    // Exact sums (Python's math.comb) and closed forms.
    expect(binomialCdf(3, 10, 0.5)).toBeCloseTo(176 / 1024, 12);
    expect(binomialCdf(0, 620, 0.005)).toBeCloseTo(0.995 ** 620, 12);
    expect(binomialCdf(4, 1000, 0.01)).toBeCloseTo(0.02868639999900447, 10);
    expect(binomialCdf(5, 1000, 0.01)).toBeCloseTo(0.0661395116072514, 10);
    // No loss seen in n: the bound is 1 - delta^(1/n).
    expect(binomialUpperBound(0, 620, 0.05)).toBeCloseTo(1 - 0.05 ** (1 / 620), 9);
    expect(binomialCdf(4, 1000, binomialUpperBound(4, 1000, 0.05))).toBeCloseTo(0.05, 6);
  });

  it('certifies every threshold below the fifth harmful sample, and serves the cheapest (the most careful among equals)', () => {
    // 1000 samples, at most 1 point lost with probability 0.95: P(Bin(1000, 0.01) <= 4) = 0.029
    // passes, P(<= 5) = 0.066 does not. So the sequence stops at the first threshold that lets
    // the fifth wrong sample out; the cheapest certified thresholds let the fourth out (all but
    // two samples leave), and the first of them is served.
    const wrong = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4];
    const calibration = calibrateThresholds(heldOut(1000, wrong), {
      criterion: 'entropy', exitCosts: [1, 4], guarantee: { epsilon: 1, delta: 0.05 },
    });
    const expected = guaranteeSequence('entropy', 2).find((t) => t >= 0.2)!;
    expect(calibration.chosen.thresholds[0]).toBeCloseTo(expected, 12);
    expect(calibration.guarantee).toMatchObject({ epsilon: 1, delta: 0.05, certified: true, samples: 1000 });
    // Four harmful samples let out: the bound is the Clopper–Pearson bound for 4 of 1000.
    expect(calibration.guarantee!.bound).toBeCloseTo(100 * binomialUpperBound(4, 1000, 0.05), 9);
    expect(calibration.guarantee!.bound).toBeLessThanOrEqual(1);
    expect(calibration.chosen.exitFractions[0]).toBeCloseTo((1000 - 2) / 1000, 9);
    expect(calibration.keepsFullNetwork).toBe(false);
  });

  it('with no harmful sample, certifies every exit taken and bounds the drop by 1 - delta^(1/n)', () => {
    const calibration = calibrateThresholds(heldOut(620, []), {
      criterion: 'maxProbability', exitCosts: [1, 4], guarantee: { epsilon: 0.5, delta: 0.05 },
    });
    expect(calibration.chosen.exitFractions[0]).toBe(1);
    expect(calibration.guarantee!.bound).toBeCloseTo(100 * (1 - 0.05 ** (1 / 620)), 6);
  });

  it('turns every exit off, and says so, when not even the most careful threshold is certified', () => {
    // 0.1 points on 620 samples: seeing no loss at all still has chance 0.999^620 = 0.54.
    const calibration = calibrateThresholds(heldOut(620, []), {
      criterion: 'entropy', exitCosts: [1, 4], guarantee: { epsilon: 0.1, delta: 0.05 },
    });
    expect(calibration.chosen.thresholds).toEqual([null]);
    expect(calibration.keepsFullNetwork).toBe(true);
    expect(calibration.guarantee).toMatchObject({ certified: false, passed: 0, bound: 0 });
  });

  it('refuses what it cannot certify, naming why', () => {
    const data = heldOut(100, []);
    expect(() => calibrateThresholds(data, { criterion: 'patience', exitCosts: [1, 4], guarantee: { epsilon: 1, delta: 0.05 } }))
      .toThrow(/a guarantee needs a criterion whose thresholds can be ordered before the data is seen .*not 'patience'/);
    expect(() => calibrateThresholds(data, { criterion: 'entropy', exitCosts: [1, 4], maxAccuracyDrop: 1, guarantee: { epsilon: 1, delta: 0.05 } }))
      .toThrow(/give either guarantee or maxAccuracyDrop and confidence, not both/);
    expect(() => calibrateThresholds(data, { criterion: 'entropy', exitCosts: [1, 4], guarantee: { epsilon: 0.005, delta: 5 } }))
      .toThrow(/guarantee\.delta is the chance the guarantee fails, above 0 and below 1 \(such as 0\.05\), got 5/);
    expect(() => calibrateThresholds(data, { criterion: 'entropy', exitCosts: [1, 4], guarantee: { epsilon: 0, delta: 0.05 } }))
      .toThrow(/guarantee\.epsilon is the accuracy drop allowed in percentage points/);
  });
});

/**
 * The guarantee checked by simulation on real held-out outputs: each pool of held-out outputs
 * is the population, calibration sets are drawn from it at random (with replacement: i.i.d.
 * from it), and a calibration violates its budget when the thresholds it chose lose more than
 * epsilon points on the whole pool. Learn-then-Test must violate in at most delta of the draws
 * (plus three standard errors of the simulation); the point estimate, choosing on the same
 * draws, violates measurably more often.
 */
describe('the guarantee, checked by simulation on real held-out outputs', () => {
  const DRAWS = 200;
  const EPSILON = 0.5;
  const DELTA = 0.05;
  const ALLOWED = Math.floor(DRAWS * (DELTA + 3 * Math.sqrt((DELTA * (1 - DELTA)) / DRAWS)));

  function mnistPool(): HeldOutOutputs {
    const { train, test } = loadMnist({ train: 8000, test: 2000, seed: 0 });
    torch.manualSeed(0);
    const model = new EarlyExitModel(jit.load(path.join(__dirname, '..', 'models', 'mnist_cnn.pt')),
      [['features1', nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(784, 10))]]);
    trainEarlyExit(model, train, { epochs: 2, lossWeights: [0.3], seed: 0 });
    return collectOutputs(model.eval(), test);
  }

  function spamPool(): HeldOutOutputs {
    const { train, test } = splitEmails(loadSpamAssassin());
    const tokenizer = WordTokenizer.load(fixture('spam_tokenizer.json'));
    torch.manualSeed(0);
    const offRamp = () => nn.Sequential(nn.Select(1, 0), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2));
    const model = new EarlyExitModel(jit.load(fixture('text_encoder_scripted.pt')),
      ['encoder.layers.0', 'encoder.layers.1', 'encoder.layers.2'].map((point) => [point, offRamp()]));
    model.freezeBackbone();
    trainEarlyExit(model, { images: tokenizer.encodeBatch(train.map((e) => e.text)).inputIds, labels: emailLabels(train) },
      { epochs: 1, lossWeights: [0.3, 0.3, 0.3], batchSize: 32, lr: 0.02, seed: 0 });
    return collectOutputs(model.eval(), { images: tokenizer.encodeBatch(test.map((e) => e.text)).inputIds, labels: emailLabels(test) }, 100);
  }

  it.each([['the MNIST demo CNN', mnistPool], ['the SpamAssassin text encoder', spamPool]])(
    '%s: Learn-then-Test breaks its budget in at most delta of the draws, the point estimate far more often', (name, makePool) => {
      torch.setNumThreads(1);
      const pool = makePool();
      const count = pool.labels.shape[0];
      const truth = Array.from(pool.labels.data() as BigInt64Array, Number);
      const predictions = pool.outputs.map((output) => Array.from(output.argmax(1).data() as BigInt64Array, Number));
      const finalRight = predictions[predictions.length - 1].filter((p, j) => p === truth[j]).length;
      const scores = exitScores(pool.outputs, 'entropy');
      /** Points lost on the whole pool at `thresholds`. */
      const dropOnPool = (thresholds: Array<number | null>) => {
        const exits = exitDecisions(scores, 'entropy', thresholds.map((t) => (t === null ? -Infinity : t)));
        return (100 * (finalRight - exits.filter((exit, j) => predictions[exit][j] === truth[j]).length)) / count;
      };
      let state = 12345;
      const uniform = () => { state = (Math.imul(state, 1664525) + 1013904223) >>> 0; return state / 4294967296; };
      const costs = pool.outputs.map((_, i) => i + 1);
      const ways = {
        guarantee: { guarantee: { epsilon: EPSILON, delta: DELTA } },
        pointEstimate: { maxAccuracyDrop: EPSILON },
        margin95: { maxAccuracyDrop: EPSILON, confidence: 0.95 },
      };
      const violations = { guarantee: 0, pointEstimate: 0, margin95: 0 };
      const leaving = { guarantee: 0, pointEstimate: 0, margin95: 0 };
      for (let draw = 0; draw < DRAWS; draw++) {
        torch.tidy(() => {
          const n = Math.floor(count / 2);
          const chosen = torch.tensor(BigInt64Array.from({ length: n }, () => BigInt(Math.floor(uniform() * count))), { shape: [n] });
          const sample = { outputs: pool.outputs.map((output) => output.indexSelect(0, chosen)), labels: pool.labels.indexSelect(0, chosen) };
          for (const [way, options] of Object.entries(ways) as Array<[keyof typeof ways, object]>) {
            const calibration = calibrateThresholds(sample, { criterion: 'entropy', exitCosts: costs, ...options });
            if (dropOnPool(calibration.chosen.thresholds) > EPSILON) violations[way]++;
            leaving[way] += 1 - calibration.chosen.exitFractions[costs.length - 1];
          }
        });
      }
      console.log(`${name}, ${count} held-out outputs, ${DRAWS} calibration draws of ${Math.floor(count / 2)}: budget ${EPSILON} points broken by ` +
        `Learn-then-Test ${violations.guarantee}, the point estimate ${violations.pointEstimate}, the 95% margin ${violations.margin95} times; ` +
        `mean share leaving early ${(leaving.guarantee / DRAWS).toFixed(3)}, ${(leaving.pointEstimate / DRAWS).toFixed(3)}, ${(leaving.margin95 / DRAWS).toFixed(3)}`);
      expect(violations.guarantee).toBeLessThanOrEqual(ALLOWED);
      expect(violations.pointEstimate).toBeGreaterThan(ALLOWED);
      // Not vacuous: most samples still leave early with the guarantee.
      expect(leaving.guarantee / DRAWS).toBeGreaterThan(0.5);
    });
});
