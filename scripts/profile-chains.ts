/**
 * Where a compiled forward's time goes (issue 28): the model compiled with oneDNN chains, run
 * at one input shape, and per chain its primitives with their mean time, the reorders among
 * them, the kernels' sum beside the whole forward, and what is left (LibTorch's operations
 * outside the chains, the interpreter, allocation).
 *
 *   npm run profile:chains -- MODEL.pt [--shape 1,3,32,32] [--runs 200] [--threads 1]
 *
 * For oneDNN's own view of the same run, set ONEDNN_VERBOSE=1 (every primitive it executes,
 * with its implementation and time, one line each).
 */
import { jit, torch } from '../lib';
import { flagValue, positiveInt } from './script-args';

function main(): void {
  const args = process.argv.slice(2);
  const file = args[0];
  if (!file || file.startsWith('--')) throw new Error('usage: profile:chains -- MODEL.pt [--shape 1,3,32,32] [--runs N] [--threads N]');
  const shape = (flagValue(args, '--shape') ?? '1,3,32,32').split(',').map((d) => positiveInt('--shape', d));
  const runs = flagValue(args, '--runs') === undefined ? 200 : positiveInt('--runs', flagValue(args, '--runs'));
  torch.setNumThreads(flagValue(args, '--threads') === undefined ? 1 : positiveInt('--threads', flagValue(args, '--threads')));
  const model = jit.optimizeForInference(jit.load(file).eval(), { optimize: 'chains' });
  const x = torch.randn(shape);
  const profile = model.profileOneDnnChains(() => model.forward(x), { runs, warmup: 20 });
  const us = (ms: number) => `${(ms * 1000).toFixed(1).padStart(8)} us`;
  console.log(`${file}, input ${shape.join('x')}, LibTorch ${torch.version.libtorch}, ${torch.getNumThreads()} thread(s), ${runs} timed forwards`);
  profile.chains.forEach((chain, i) => {
    for (const plan of chain) {
      console.log(`\nchain ${i + 1}, input ${plan.shape}, arena ${(plan.arenaBytes / 1024).toFixed(0)} KiB:`);
      for (const primitive of plan.primitives) console.log(`${us(primitive.meanMs ?? 0)}  ${primitive.description}`);
    }
  });
  const reorders = profile.chains.flat().flatMap((plan) => plan.primitives).filter((p) => p.description.startsWith('reorder '));
  const reorderMs = reorders.reduce((sum, p) => sum + (p.meanMs ?? 0), 0);
  console.log(`\nforward ${us(profile.forwardMs)}  (timed: each primitive waited for)`);
  console.log(`kernels ${us(profile.kernelMs)}  of which ${reorders.length} reorders ${us(reorderMs).trim()}`);
  console.log(`other   ${us(profile.otherMs)}  LibTorch's operations outside the chains, the interpreter, allocation`);
}

main();
