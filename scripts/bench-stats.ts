/** Statistics and tables shared by the benchmark scripts. */
import { quantile } from '../lib/util/quantile';

export { quantile };

export function median(values: number[]): number { return quantile(values, 0.5); }

/** A text table: a header row, a rule, then the rows, each column padded to its widest cell. */
export function table(rows: string[][], rightAligned: boolean[]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row: string[]): string =>
    row.map((cell, c) => (rightAligned[c] ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ');
  return [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}
