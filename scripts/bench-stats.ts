/** Statistics and tables shared by the benchmark scripts. */
import { quantile } from '../lib/quantile';

export { quantile };

export function sorted(values: number[]): number[] { return [...values].sort((x, y) => x - y); }

export function median(values: number[]): number { return quantile(values, 0.5); }

export function mean(values: number[]): number { return values.reduce((sum, v) => sum + v, 0) / values.length; }

/** The mean of what is left after dropping `fraction` of the samples at each end. */
export function trimmedMean(values: number[], fraction = 0.1): number {
  const s = sorted(values);
  const cut = Math.floor(s.length * fraction);
  return mean(s.slice(cut, s.length - cut));
}

/** A 95% percentile-bootstrap interval of the median (fixed seed: the same samples give the same interval). */
export function bootstrapMedianCI(values: number[], resamples = 2000): [number, number] {
  let state = 0x2545f491;
  const random = (): number => {
    state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
    return (state >>> 0) / 4294967296;
  };
  const medians: number[] = [];
  for (let r = 0; r < resamples; r++) medians.push(median(values.map(() => values[Math.floor(random() * values.length)])));
  return [quantile(medians, 0.025), quantile(medians, 0.975)];
}

export interface Summary { n: number; median: number; mean: number; trimmedMean: number; min: number; p25: number; p75: number; max: number }

export function summarize(values: number[]): Summary {
  return {
    n: values.length, median: median(values), mean: mean(values), trimmedMean: trimmedMean(values), min: Math.min(...values),
    p25: quantile(values, 0.25), p75: quantile(values, 0.75), max: Math.max(...values),
  };
}

/** A text table: a header row, a rule, then the rows, each column padded to its widest cell. */
export function table(rows: string[][], rightAligned: boolean[]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]): string =>
    row.map((cell, c) => (rightAligned[c] ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ');
  return [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}
