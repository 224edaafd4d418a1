/**
 * Serving inputs one at a time with real early exits, against the full network, on the
 * same inputs and alternating sample by sample so both see the same machine state.
 */
import { ScriptModule } from '../torch/jit';
import { Tensor } from '../torch/tensor';
import { noGrad, tidy } from '../torch/torch';
import { EarlyExitModel, EarlyExitPolicy } from './model';

export interface ServedExit {
  exit: string;
  samples: number;
  /** Percent of the samples that left here. */
  share: number;
  /** Top-1 accuracy (percent) of the samples that left here. */
  accuracy: number;
  meanLatencyMs: number;
}

export interface ServingReport {
  exits: ServedExit[];
  accuracy: number;
  fullAccuracy: number;
  meanLatencyMs: number;
  fullMeanLatencyMs: number;
  /** Full network mean latency over early-exit mean latency. */
  speedup: number;
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);
}

/**
 * Runs each of `images` (batch 1) through `model.forwardEarlyExit` and through `full`,
 * timing both, and reports per exit and overall. `images` is a batch to take one row at a
 * time, or a function giving sample i alone (an e-mail's token ids at its own length, not
 * padded to a batch's longest). Gives the event loop a turn every 200 samples; returns
 * undefined when `shouldStop` says so.
 */
export async function serveOneAtATime(model: EarlyExitModel, full: ScriptModule, images: Tensor | ((i: number) => Tensor), labels: readonly number[],
  policy: EarlyExitPolicy, shouldStop: () => boolean = () => false): Promise<ServingReport | undefined> {
  const taken: number[] = [];
  const correct: boolean[] = [];
  const latency: number[] = [];
  const fullLatency: number[] = [];
  let fullCorrect = 0;
  for (let i = 0; i < labels.length; i++) {
    if (i % 200 === 0) await new Promise((resolve) => setImmediate(resolve));
    if (shouldStop()) return undefined;
    noGrad(() => tidy(() => {
      const x = typeof images === 'function' ? images(i) : images.narrow(0, i, 1);
      // Each side's time is its forward and reading its answer back, as a server would.
      let started = process.hrtime.bigint();
      const result = model.forwardEarlyExit(x, policy);
      const logits = result.output.data() as Float32Array;
      latency.push(Number(process.hrtime.bigint() - started) / 1e6);
      started = process.hrtime.bigint();
      const fullLogits = (full.forward(x) as Tensor).data() as Float32Array;
      fullLatency.push(Number(process.hrtime.bigint() - started) / 1e6);
      const prediction = argmax(logits);
      const fullPrediction = argmax(fullLogits);
      taken.push(result.exit);
      correct.push(prediction === labels[i]);
      if (fullPrediction === labels[i]) fullCorrect++;
    }));
  }
  const names = [...model.exitPoints.map((p, i) => `exit ${i} (${p})`), 'final'];
  const exits: ServedExit[] = names.map((name, e) => {
    const indices = taken.map((t, j) => (t === e ? j : -1)).filter((j) => j >= 0);
    return {
      exit: name, samples: indices.length, share: (100 * indices.length) / labels.length,
      accuracy: indices.length ? (100 * indices.filter((j) => correct[j]).length) / indices.length : 0,
      meanLatencyMs: mean(indices.map((j) => latency[j])),
    };
  });
  return {
    exits,
    accuracy: (100 * correct.filter(Boolean).length) / labels.length,
    fullAccuracy: (100 * fullCorrect) / labels.length,
    meanLatencyMs: mean(latency),
    fullMeanLatencyMs: mean(fullLatency),
    speedup: mean(fullLatency) / mean(latency),
  };
}
