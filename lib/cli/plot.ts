/** The trade-off curve as an SVG picture: accuracy against speedup, the chosen point marked. */
import type { Advice } from '../early-exit/advise';
import { Calibration } from '../early-exit/calibrate';

const WIDTH = 640;
const HEIGHT = 420;
const MARGIN = { left: 64, right: 24, top: 40, bottom: 56 };

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** An SVG picture's opening: the element and its white background; `parts` goes on from here. */
function svgStart(): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
  ];
}

function ticks(min: number, max: number, count: number): number[] {
  const step = (max - min) / count;
  return Array.from({ length: count + 1 }, (_, i) => min + i * step);
}

/** An SVG of `calibration.curve` (expected speedup from measured exit latencies). */
export function tradeOffSvg(calibration: Calibration, title: string): string {
  const points = calibration.curve.map((p) => ({ x: p.speedup, y: p.accuracy }));
  const chosen = { x: calibration.chosen.speedup, y: calibration.chosen.accuracy };
  const xs = [1, ...points.map((p) => p.x), chosen.x];
  const ys = [calibration.finalAccuracy, ...points.map((p) => p.y), chosen.y];
  const xMin = Math.min(...xs) * 0.95;
  const xMax = Math.max(...xs) * 1.05;
  const yMin = Math.max(0, Math.min(...ys) - 1);
  const yMax = Math.min(100, Math.max(...ys) + 0.5);
  const sx = (x: number) => MARGIN.left + ((x - xMin) / (xMax - xMin || 1)) * (WIDTH - MARGIN.left - MARGIN.right);
  const sy = (y: number) => HEIGHT - MARGIN.bottom - ((y - yMin) / (yMax - yMin || 1)) * (HEIGHT - MARGIN.top - MARGIN.bottom);
  const parts = svgStart();
  parts.push(`<text x="${WIDTH / 2}" y="22" text-anchor="middle" font-size="15">${escape(title)}</text>`);
  for (const x of ticks(xMin, xMax, 5)) {
    parts.push(`<line x1="${sx(x)}" x2="${sx(x)}" y1="${MARGIN.top}" y2="${HEIGHT - MARGIN.bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${sx(x)}" y="${HEIGHT - MARGIN.bottom + 18}" text-anchor="middle">${x.toFixed(2)}x</text>`);
  }
  for (const y of ticks(yMin, yMax, 5)) {
    parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${sy(y)}" y2="${sy(y)}" stroke="#eee"/>`);
    parts.push(`<text x="${MARGIN.left - 8}" y="${sy(y) + 4}" text-anchor="end">${y.toFixed(1)}%</text>`);
  }
  parts.push(`<text x="${WIDTH / 2}" y="${HEIGHT - 14}" text-anchor="middle">speedup against the full network (measured exit latencies)</text>`);
  parts.push(`<text transform="translate(16 ${HEIGHT / 2}) rotate(-90)" text-anchor="middle">held-out top-1 accuracy</text>`);
  const floor = calibration.finalAccuracy;
  parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${sy(floor)}" y2="${sy(floor)}" stroke="#999" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${WIDTH - MARGIN.right - 4}" y="${sy(floor) - 6}" text-anchor="end" fill="#666">final exit only: ${floor.toFixed(2)}%</text>`);
  parts.push(`<circle cx="${sx(1).toFixed(1)}" cy="${sy(floor).toFixed(1)}" r="4" fill="#666"/>`);
  parts.push(`<text x="${sx(1) + 8}" y="${sy(floor) + 16}" fill="#666">full network (1.00x)</text>`);
  const path = points.map((p, i) => `${i === 0 ? 'M' : 'L'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' ');
  parts.push(`<path d="${path}" fill="none" stroke="#1f77b4" stroke-width="2"/>`);
  for (const p of points) parts.push(`<circle cx="${sx(p.x).toFixed(1)}" cy="${sy(p.y).toFixed(1)}" r="3" fill="#1f77b4"/>`);
  parts.push(`<circle id="chosen" cx="${sx(chosen.x).toFixed(1)}" cy="${sy(chosen.y).toFixed(1)}" r="7" fill="none" stroke="#d62728" stroke-width="3"/>`);
  // The label goes on the side of the point with room for it.
  const right = sx(chosen.x) > WIDTH * 0.6;
  parts.push(`<text x="${sx(chosen.x) + (right ? -12 : 12)}" y="${sy(chosen.y) + 20}" text-anchor="${right ? 'end' : 'start'}" ` +
    `fill="#d62728">chosen: ${chosen.y.toFixed(2)}% at ${chosen.x.toFixed(2)}x</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

/** A line of `lineChartSvg`. */
export interface Series {
  name: string;
  points: Array<{ x: number; y: number }>;
  dashed?: boolean;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#7f7f7f'];

/** Lines over a shared x axis (from 0), with a legend: for benchmark curves such as latency against load. */
export function lineChartSvg(series: Series[], labels: { title: string; x: string; y: string; xFormat?: (x: number) => string }): string {
  const all = series.flatMap((s) => s.points);
  const xMin = 0;
  const xMax = Math.max(...all.map((p) => p.x)) * 1.05;
  const yMin = 0;
  const yMax = Math.max(...all.map((p) => p.y)) * 1.1;
  const sx = (x: number) => MARGIN.left + ((x - xMin) / (xMax - xMin || 1)) * (WIDTH - MARGIN.left - MARGIN.right);
  const sy = (y: number) => HEIGHT - MARGIN.bottom - ((y - yMin) / (yMax - yMin || 1)) * (HEIGHT - MARGIN.top - MARGIN.bottom);
  const format = labels.xFormat ?? ((x: number) => x.toFixed(0));
  const parts = svgStart();
  parts.push(`<text x="${WIDTH / 2}" y="22" text-anchor="middle" font-size="15">${escape(labels.title)}</text>`);
  for (const x of ticks(xMin, xMax, 5)) {
    parts.push(`<line x1="${sx(x)}" x2="${sx(x)}" y1="${MARGIN.top}" y2="${HEIGHT - MARGIN.bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${sx(x)}" y="${HEIGHT - MARGIN.bottom + 18}" text-anchor="middle">${escape(format(x))}</text>`);
  }
  for (const y of ticks(yMin, yMax, 5)) {
    parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${sy(y)}" y2="${sy(y)}" stroke="#eee"/>`);
    parts.push(`<text x="${MARGIN.left - 8}" y="${sy(y) + 4}" text-anchor="end">${y.toFixed(y < 10 ? 1 : 0)}</text>`);
  }
  parts.push(`<text x="${WIDTH / 2}" y="${HEIGHT - 14}" text-anchor="middle">${escape(labels.x)}</text>`);
  parts.push(`<text transform="translate(16 ${HEIGHT / 2}) rotate(-90)" text-anchor="middle">${escape(labels.y)}</text>`);
  series.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    const path = line.points.map((p, j) => `${j === 0 ? 'M' : 'L'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' ');
    parts.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="2"${line.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    for (const p of line.points) parts.push(`<circle cx="${sx(p.x).toFixed(1)}" cy="${sy(p.y).toFixed(1)}" r="3" fill="${color}"/>`);
    const ly = MARGIN.top + 8 + i * 16;
    parts.push(`<line x1="${MARGIN.left + 10}" x2="${MARGIN.left + 34}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${line.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    parts.push(`<text x="${MARGIN.left + 40}" y="${ly + 4}">${escape(line.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

/**
 * advise's picture: per candidate, in forward order, the expected latency it saves as the
 * only exit (a bar, below the axis where its ramp costs more than it saves) and the share of
 * samples that would leave there; the chosen exits in red, and the chosen set's saving as a
 * dashed line.
 */
export function adviceSvg(advice: Pick<Advice, 'candidates' | 'chosen' | 'saving'>, title: string): string {
  const values = advice.candidates.map((c) => 100 * c.saving);
  const yMax = Math.max(5, ...values, 100 * advice.saving) * 1.15;
  const yMin = Math.min(0, ...values) * 1.15;
  const bottom = HEIGHT - MARGIN.bottom - 60;
  const sy = (y: number) => bottom - ((y - yMin) / (yMax - yMin)) * (bottom - MARGIN.top);
  const slot = (WIDTH - MARGIN.left - MARGIN.right) / Math.max(1, values.length);
  const parts = svgStart();
  parts.push(`<text x="${WIDTH / 2}" y="22" text-anchor="middle" font-size="15">${escape(title)}</text>`);
  for (const y of ticks(yMin, yMax, 5)) {
    parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${sy(y).toFixed(1)}" y2="${sy(y).toFixed(1)}" stroke="#eee"/>`);
    parts.push(`<text x="${MARGIN.left - 8}" y="${(sy(y) + 4).toFixed(1)}" text-anchor="end">${y.toFixed(0)}%</text>`);
  }
  parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${sy(0).toFixed(1)}" y2="${sy(0).toFixed(1)}" stroke="#333"/>`);
  advice.candidates.forEach((c, i) => {
    const x = MARGIN.left + i * slot + slot * 0.15;
    const top = sy(Math.max(0, values[i]));
    const height = Math.abs(sy(values[i]) - sy(0));
    const chosen = advice.chosen.includes(c.point);
    parts.push(`<rect class="candidate" x="${x.toFixed(1)}" y="${top.toFixed(1)}" width="${(slot * 0.7).toFixed(1)}" height="${height.toFixed(1)}" ` +
      `fill="${chosen ? '#d62728' : '#1f77b4'}"><title>${escape(`${c.point}: saves ${values[i].toFixed(1)}%, ${(100 * c.share).toFixed(0)}% leave`)}</title></rect>`);
    const cx = x + slot * 0.35;
    parts.push(`<text transform="translate(${cx.toFixed(1)} ${bottom + 10}) rotate(45)" font-size="10">${escape(c.point)}</text>`);
  });
  const line = sy(100 * advice.saving);
  parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${line.toFixed(1)}" y2="${line.toFixed(1)}" stroke="#d62728" stroke-dasharray="6 4"/>`);
  parts.push(`<text x="${WIDTH - MARGIN.right - 4}" y="${(line - 6).toFixed(1)}" text-anchor="end" fill="#d62728">` +
    `${escape(`chosen: ${advice.chosen.length ? advice.chosen.join(', ') : 'no exit'}, saves ${(100 * advice.saving).toFixed(1)}%`)}</text>`);
  parts.push(`<text transform="translate(16 ${(bottom + MARGIN.top) / 2}) rotate(-90)" text-anchor="middle">expected latency saved as the only exit</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
