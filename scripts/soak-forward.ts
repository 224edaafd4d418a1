/**
 * A memory soak of forwards WITH gradients and WITHOUT dispose: the outputs keep their
 * autograd graphs (ResNet-20 at batch 16 keeps about 22 MB per call) and only the garbage
 * collector frees them, which it does in time only if V8 knows what they hold.
 *
 *   async  N calls of `await model.forwardAsync(x)`
 *   sync   N calls of `model.forward(x)`, yielding to the event loop after each (Node-API
 *          runs the finalizers of collected native objects when the event loop turns, so a
 *          loop that never yields frees nothing until it does: use noGrad, tidy or dispose there)
 *
 * RSS is sampled after the first 50 calls (the baseline: the allocator and the TorchScript
 * executor have settled) and every 50 calls after. PASS when no sample exceeds the baseline
 * by more than --limit-mb (200); exit code 1 on FAIL. One intra-op thread.
 *
 *   npm run build:ts && node dist/scripts/soak-forward.js [--async 2000] [--sync 500] [--batch 16] [--json out.json]
 */
import * as fs from 'fs';
import * as path from 'path';
import type * as Lib from '../lib';
import { jsonFile, positiveInt } from './script-args';

const MB = 1024 * 1024;
const BASELINE_CALLS = 50;

interface Options { async: number; sync: number; batch: number; limitMb: number; json?: string }

interface Soak { mode: 'async' | 'sync'; calls: number; baselineMb: number; peakMb: number; endMb: number; growthMb: number; pass: boolean }

function parseArgs(args: string[]): Options {
  const options: Options = { async: 2000, sync: 500, batch: 16, limitMb: 200 };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const value = args[++i];
    if (flag === '--async') options.async = value === '0' ? 0 : positiveInt(flag, value);
    else if (flag === '--sync') options.sync = value === '0' ? 0 : positiveInt(flag, value);
    else if (flag === '--batch') options.batch = positiveInt(flag, value);
    else if (flag === '--limit-mb') options.limitMb = positiveInt(flag, value);
    else if (flag === '--json') options.json = jsonFile(value);
    else throw new Error(`soak-forward: unknown argument '${flag}'`);
  }
  return options;
}

async function soak(lib: typeof Lib, mode: Soak['mode'], calls: number, options: Options): Promise<Soak> {
  const model = lib.jit.load(path.join(__dirname, '..', '..', 'test', 'fixtures', 'resnet20_scripted.pt'));
  const input = lib.torch.randn([options.batch, 3, 32, 32]);
  const rss = () => process.memoryUsage().rss / MB;
  let baseline = 0;
  let peak = 0;
  for (let call = 1; call <= calls; call++) {
    if (mode === 'async') await model.forwardAsync(input);
    else {
      model.forward(input);
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (call === BASELINE_CALLS) baseline = rss();
    if (call > BASELINE_CALLS && call % 50 === 0) peak = Math.max(peak, rss());
  }
  const end = rss();
  const growth = Math.max(peak, end) - baseline;
  return { mode, calls, baselineMb: Math.round(baseline), peakMb: Math.round(peak), endMb: Math.round(end), growthMb: Math.round(growth), pass: growth <= options.limitMb };
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  const lib = require('../lib') as typeof Lib;
  lib.torch.setNumThreads(1);
  lib.torch.setGradEnabled(true);
  console.log(`soak-forward: ResNet-20, batch ${options.batch}, gradients on, no dispose, 1 thread, ` +
    `MALLOC_ARENA_MAX=${process.env.MALLOC_ARENA_MAX ?? 'unset'}, MALLOC_MMAP_THRESHOLD_=${process.env.MALLOC_MMAP_THRESHOLD_ ?? 'unset'}`);
  const results: Soak[] = [];
  for (const [mode, calls] of [['async', options.async], ['sync', options.sync]] as const) {
    if (calls <= BASELINE_CALLS) continue;
    const result = await soak(lib, mode, calls, options);
    results.push(result);
    console.log(`${mode.padEnd(5)} ${calls} calls: RSS ${result.baselineMb} MB after ${BASELINE_CALLS}, peak ${result.peakMb} MB, ` +
      `end ${result.endMb} MB: growth ${result.growthMb} MB (limit ${options.limitMb}) ${result.pass ? 'PASS' : 'FAIL'}`);
  }
  if (options.json) fs.writeFileSync(options.json, JSON.stringify({ options, results }, null, 2));
  process.exitCode = results.every((result) => result.pass) ? 0 : 1;
}

main().catch((error) => { console.error(error); process.exit(2); });
