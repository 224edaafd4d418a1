/** What the command line prints with: tables, percentages, progress bars, advise's table. */
import { Presets, SingleBar } from 'cli-progress';
import type { Advice } from '../early-exit/advise';
import { BatchProgress } from '../early-exit/trainer';

/** Rows as columns: the first left-aligned, the others right-aligned. */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  return rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ')).join('\n');
}

/** A percentage with two decimals. */
export function pct(value: number): string { return `${value.toFixed(2)}%`; }

/**
 * A progress bar per epoch of training: `onBatch` for `TrainOptions.onBatch`, showing the
 * loss and each output's batch accuracy (of the outputs named by `names`; none when empty).
 * `stop` ends the current bar: always call it, as a bar left running keeps a timer, and the
 * process, alive.
 */
export function batchBar(epochs: number, names: readonly string[]): { onBatch: (p: BatchProgress) => void; stop: () => void } {
  let bar: SingleBar | undefined;
  return {
    onBatch: (p) => {
      if (p.batch === 0) {
        bar?.stop();
        bar = new SingleBar({
          format: `epoch ${p.epoch + 1}/${epochs} |{bar}| {value}/{total} loss {loss}${names.length > 0 ? ' acc {accuracy}' : ''}`,
          hideCursor: true, clearOnComplete: false, noTTYOutput: true, notTTYSchedule: 5000, stream: process.stdout,
        }, Presets.shades_classic);
        bar.start(p.batches, 0, { loss: '-', accuracy: '-' });
      }
      bar!.update(p.batch + 1, {
        loss: p.loss.toFixed(3), accuracy: p.accuracy.map((a, i) => `${names[i]} ${a.toFixed(0)}%`).join(' '),
      });
    },
    stop: () => {
      bar?.stop();
      bar = undefined;
    },
  };
}

/** The table, the choice and the search, as advise prints them. */
export function printAdvice(advice: Advice, samples: number, log: (line: string) => void): void {
  const ms = (x: number) => `${x.toFixed(3)} ms`;
  const { calibration } = advice;
  log(`\ncandidates, timed at batch 1 compiled for inference (${advice.inferenceOptimization}); leaving and saving as the only exit, ` +
    `on ${samples} held-out samples:`);
  log(table([['point', 'output', 'prefix', 'ramp', 'ramp accuracy', 'leaving', 'saving'],
    ...advice.candidates.map((c) => [c.point, `[${c.shape.slice(1).join(', ')}]`, ms(c.prefixLatencyMs), ms(c.rampLatencyMs),
      pct(c.rampAccuracy), pct(100 * c.share), pct(100 * c.saving)])]));
  const certificate = calibration.guarantee;
  const budget = certificate
    ? `at most ${certificate.epsilon} points lost with probability ${1 - certificate.delta}`
    : 'within the allowed drop on these samples';
  log(`network without exits: ${ms(advice.baselineLatencyMs)}; final output ${pct(calibration.finalAccuracy)}`);
  if (advice.chosen.length === 0) {
    log(`chosen: no exit. No set of exits beats the network without exits ${budget}.`);
  } else {
    log(`chosen: ${advice.chosen.join(', ')} (${calibration.criterion}, thresholds [${calibration.chosen.thresholds.map((t) => (t === null ? 'never' : t.toFixed(4)))}], ` +
      `${budget}${certificate ? `: bound ${certificate.bound.toFixed(2)}` : ''}); expected ${ms(advice.expectedLatencyMs)} per sample, ` +
      `${pct(100 * advice.saving)} saved, predicted on the samples that chose it`);
  }
  log(`search: ${advice.search.map((s) => `${s.step === 'add' ? '+' : '-'}${s.point} (${ms(s.expectedLatencyMs)})`).join(', ') || 'no exit pays'}`);
}
