'use strict';
/**
 * Run as a child process by test/robustness.test.ts: starts a worker_threads Worker that
 * runs native work in a loop (the mode in argv[2]), waits for its 'ready' message, then
 * terminates it a few milliseconds later; five times, with different delays. Prints 'ok'
 * when the process lived through all of them.
 */
const path = require('path');
const { Worker } = require('worker_threads');

const [mode, lib, model] = process.argv.slice(2);

const worker = `
const { parentPort, workerData } = require('worker_threads');
const { jit, torch } = require(workerData.lib);
const mode = workerData.mode;
torch.manualSeed(1);
const x = torch.randn([16, 3, 32, 32]);
const model = jit.load(workerData.model);
const tick = () => new Promise((resolve) => setImmediate(resolve));
async function main() {
  if (mode === 'forwardAsync') {
    parentPort.postMessage('ready');
    for (;;) await model.forwardAsync(x);
  } else if (mode === 'forward') {
    parentPort.postMessage('ready');
    for (;;) model.forward(x);
  } else if (mode === 'hook') {
    let calls = 0;
    model.getModule('layer1').registerForwardHook((module, inputs, output) => { calls += output.shape[0]; });
    parentPort.postMessage('ready');
    for (;;) await model.forwardAsync(x);
  } else if (mode === 'load') {
    parentPort.postMessage('ready');
    for (;;) jit.load(workerData.model);
  } else if (mode === 'exit') {
    // The timer cannot run while the thread is inside a sync forward, so it arms the exit and
    // the forward's own hook on 'layer1' calls process.exit(0) in the middle of native work.
    let armed = false;
    setTimeout(() => { armed = true; }, workerData.delay);
    model.getModule('layer1').registerForwardHook(() => { if (armed) process.exit(0); });
    parentPort.postMessage('ready');
    for (;;) { model.forward(x); await tick(); }
  } else if (mode === 'transfer') {
    parentPort.postMessage('ready');
    for (;;) {
      const data = model.forward(x).data();
      parentPort.postMessage(data.buffer, [data.buffer]);
    }
  } else {
    throw new Error('unknown mode ' + mode);
  }
}
main().catch((error) => { parentPort.postMessage({ error: String(error && error.stack || error) }); });
`;

async function once(delay) {
  const w = new Worker(worker, { eval: true, workerData: { lib, model, mode, delay } });
  const exited = new Promise((resolve) => w.once('exit', resolve));
  let failure;
  w.on('error', (error) => { failure = error; });
  await new Promise((resolve, reject) => {
    w.on('message', (message) => {
      if (message === 'ready') resolve();
      else if (message && message.error) reject(new Error(`worker (${mode}) failed: ${message.error}`));
    });
    w.once('exit', (code) => reject(new Error(`worker (${mode}) exited with ${code} before it was ready${failure ? `: ${failure.stack}` : ''}`)));
  });
  if (mode === 'exit') {
    // The worker ends itself with process.exit from its timer; terminate only if it does not.
    let stuck = false;
    const timer = setTimeout(() => { stuck = true; w.terminate(); }, 10000);
    await exited;
    clearTimeout(timer);
    if (stuck) throw new Error('the worker did not end itself with process.exit(0) within 10 s');
  } else {
    await new Promise((resolve) => setTimeout(resolve, delay));
    await w.terminate();
  }
  await exited;
  if (failure) throw failure;
}

(async () => {
  for (const delay of [20, 35, 50, 65, 80]) await once(delay);
  process.stdout.write('ok\n');
})().catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(1);
});
