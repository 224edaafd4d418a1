/** What the command line prints with: tables, percentages, progress bars. */
import { Presets, SingleBar } from 'cli-progress';
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
