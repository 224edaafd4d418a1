/**
 * Online thresholds (Apparate-style) on synthetic feedback whose agreement is known, and in
 * a server on a real model.
 */
import { ThresholdTuner } from '../lib/serving/adaptive';
import { EarlyExitServer } from '../lib/serving/server';
import { medianEntropySplit, mnistTwoExits } from './helpers';

/** A seeded uniform generator. */
function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => { state = (state * 1664525 + 1013904223) >>> 0; return state / 2 ** 32; };
}

describe('ThresholdTuner', () => {
  it('sets each exit to the loosest entropy threshold whose leavers agree with the final output often enough', () => {
    const random = generator(7);
    // Exit 0 agrees when its entropy is below 1, half the time above; exit 1 always below 2.
    const tuner = new ThresholdTuner('entropy', [0.1, 0.1], { targetAgreement: 0.95, window: 400, every: 400, minSamples: 20 });
    const samples = Array.from({ length: 400 }, () => [random() * 2, random() * 4]);
    samples.forEach(([s0, s1]) => tuner.observe([s0, s1], [s0 < 1 || random() < 0.5 ? 1 : 2, s1 < 2 || random() < 0.5 ? 1 : 2], 1));
    const [t0, t1] = tuner.thresholds;
    // By construction, all agree below 1 and half above: the loosest bound with 95% agreement
    // among the leavers lies a little above 1 (and above 2 for exit 1, among those exit 0 kept).
    expect(t0).not.toBeNull();
    expect(t0!).toBeGreaterThanOrEqual(1);
    expect(t0!).toBeLessThan(1.2);
    expect(t1).not.toBeNull();
    expect(t1!).toBeGreaterThanOrEqual(2);
    expect(t1!).toBeLessThan(2.5);
  });

  it('closes an exit (null) whose predictions never agree often enough, and higher-is-confident criteria turn the order', () => {
    const random = generator(3);
    const never = new ThresholdTuner('entropy', [0.5], { targetAgreement: 0.99, window: 200, every: 200, minSamples: 20 });
    for (let i = 0; i < 200; i++) never.observe([random()], [random() < 0.5 ? 1 : 0], 1);
    expect(never.thresholds).toEqual([null]);
    const high = new ThresholdTuner('maxProbability', [0.99], { targetAgreement: 0.9, window: 300, every: 300, minSamples: 20 });
    for (let i = 0; i < 300; i++) {
      const p = random();
      high.observe([p], [p > 0.7 || random() < 0.3 ? 4 : 5], 4);
    }
    expect(high.thresholds[0]!).toBeGreaterThan(0.6);
    expect(high.thresholds[0]!).toBeLessThanOrEqual(0.72);
  });

  it('reports agreement by the thresholds in force when each sample came', () => {
    const tuner = new ThresholdTuner('entropy', [0.5], { window: 10, every: 1000, minSamples: 1000 });
    tuner.observe([0.1], [3], 3); // leaves, agrees
    tuner.observe([0.2], [4], 3); // leaves, disagrees
    tuner.observe([0.9], [4], 3); // goes on to the final output
    expect(tuner.agreement()).toMatchObject({ perExit: [0.5], overall: 2 / 3, monitored: 3, retunes: 0 });
    expect(() => new ThresholdTuner('patience', [1])).toThrow(/patience/);
    expect(() => new ThresholdTuner('entropy', [1], { sampleRate: 0 })).toThrow(/sampleRate must be in \(0, 1\]/);
  });
});

describe('a server with adaptive thresholds', () => {
  it('monitors requests on the real model and retunes from their feedback', async () => {
    const model = mnistTwoExits();
    const { x, thresholds } = medianEntropySplit(model);
    const server = new EarlyExitServer(model, {
      inputShape: [1, 28, 28], policy: { criterion: 'entropy', thresholds }, maxBatchSize: 16, maxQueueDelayMs: 1, instances: 1,
      adaptive: { sampleRate: 1, every: 16, minSamples: 16, targetAgreement: 0.9 },
    });
    for (let round = 0; round < 3; round++) await Promise.all(Array.from({ length: 16 }, (_, i) => server.infer(x.narrow(0, i, 1))));
    await server.close(); // the last batch's feedback runs after its answers went out
    const stats = server.stats();
    expect(stats.agreement!.monitored).toBe(48);
    expect(stats.agreement!.retunes).toBeGreaterThanOrEqual(2);
    expect(stats.agreement!.target).toBe(0.9);
    // Retuned from the feedback it saw.
    expect(stats.thresholds).not.toEqual(thresholds);
  });
});
