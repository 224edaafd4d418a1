/** The `qs` quantiles of `values` (each 0 to 1), interpolating between neighbours, from one sort; NaN when empty. */
export function quantiles(values: readonly number[], qs: readonly number[]): number[] {
  const s = [...values].sort((x, y) => x - y);
  return qs.map((q) => {
    if (s.length === 0) return NaN;
    const position = (s.length - 1) * q;
    const low = Math.floor(position);
    const high = Math.ceil(position);
    return s[low] + (s[high] - s[low]) * (position - low);
  });
}

/** The `q` quantile of `values` (0 to 1), interpolating between neighbours; NaN when empty. */
export function quantile(values: readonly number[], q: number): number {
  return quantiles(values, [q])[0];
}
