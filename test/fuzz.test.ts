/**
 * The fuzz suite (scripts/fuzz.ts) at the counts the robustness issues ask for: 1,000
 * damaged files, 180 damaged checkpoints, 300 bad calls, 100 worker terminations, 24 failing writes on a full disk.
 * Each case runs in a child process; the counts must show no crash, no hang, no previous
 * file damaged, no damaged file loaded silently and no file that loads with another output. The seed is fixed so that CI is
 * repeatable; `npm run fuzz` picks a new one each run.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const SEED = 20261125;

describe('fuzz suite', () => {
  it('ends every case in an Error or a success: no signal, no hang, no damage', () => {
    const json = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-fuzz-test-')), 'fuzz.json');
    const run = spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'scripts', 'fuzz.js'), '--seed', String(SEED), '--json', json],
      { encoding: 'utf8', timeout: 600000 });
    console.log(run.stdout);
    expect(run.signal).toBeNull();
    const report = JSON.parse(fs.readFileSync(json, 'utf8')) as {
      table: Array<{ kind: string; cases: number; counts: Record<string, number>; note?: string }>; totals: Record<string, number>; bad: unknown[];
    };
    const cases = Object.fromEntries(report.table.map((row) => [row.kind, row.cases]));
    expect(cases.files).toBe(1000);
    expect(cases.checkpoints).toBe(180);
    expect(cases.inputs).toBe(300);
    expect(cases.workers).toBe(100);
    // The full-disk cases need root (a tmpfs mount); the table says why when they were skipped.
    const writes = report.table.find((row) => row.kind === 'writes')!;
    if (writes.cases === 0) console.log(`writes ${writes.note}`);
    else expect(writes.cases).toBe(24);
    expect(report.bad).toEqual([]);
    for (const result of ['signal', 'hang', 'silent-damage', 'wrong-output', 'previous-damaged', 'leftover', 'unclear-error', 'not-an-error']) {
      expect(report.totals[result] ?? 0).toBe(0);
    }
    expect(run.status).toBe(0);
  }, 900000);

  it('terminates 100 workers in the middle of jit.load without a signal (a 1-in-10 abort would show with 99.997% odds)', () => {
    // The abort this found (1 in about 1,000: Node's zlib handle closed before its init) is
    // gone with zip entries inflated in JavaScript; `npm run soak:load` runs 1,000.
    const json = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-soak-load-')), 'soak.json');
    const run = spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'scripts', 'fuzz.js'), '--seed', String(SEED), '--files', '0', '--checkpoints', '0',
      '--inputs', '0', '--writes', '0', '--workers', '100', '--worker-mode', 'load', '--json', json], { encoding: 'utf8', timeout: 600000 });
    console.log(run.stdout);
    const report = JSON.parse(fs.readFileSync(json, 'utf8')) as { table: Array<{ kind: string; cases: number; counts: Record<string, number> }>; bad: unknown[] };
    expect(report.table).toEqual([expect.objectContaining({ kind: 'workers', cases: 100, counts: { ok: 100 } })]);
    expect(report.bad).toEqual([]);
    expect(run.status).toBe(0);
  }, 900000);
});
