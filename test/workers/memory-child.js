'use strict';
/**
 * Run as a child process (node --expose-gc) by test/robustness.test.ts: runs forwards with
 * gradients enabled and never disposes the outputs, so only the garbage collector can free
 * them; prints the resident set size after the warm-up and at the end, as JSON.
 * argv: mode ('forwardAsync' | 'forward'), the compiled library, the model, iterations, warm-up.
 */
const [mode, lib, file, iterations, warmup] = process.argv.slice(2);
const { jit, torch } = require(lib);

(async () => {
  torch.manualSeed(0);
  const model = jit.load(file);
  torch.setGradEnabled(true);
  let baseline = 0;
  let last;
  for (let i = 1; i <= Number(iterations); i++) {
    if (mode === 'forwardAsync') {
      last = await model.forwardAsync(torch.randn([16, 3, 32, 32]));
    } else {
      last = model.forward(torch.randn([16, 3, 32, 32]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (i === Number(warmup)) baseline = process.memoryUsage().rss;
  }
  const end = process.memoryUsage().rss;
  process.stdout.write(`${JSON.stringify({ mode, iterations: Number(iterations), baseline, end, growthMB: (end - baseline) / 2 ** 20, requiresGrad: last.requiresGrad })}\n`);
})().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
