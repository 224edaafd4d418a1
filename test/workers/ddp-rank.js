'use strict';
/**
 * One rank of test/distributed.test.ts, run as its own process:
 *   node ddp-rank.js LIB FIXTURES PORT RANK WORLD MODE OUT [OPTIONS_JSON]
 * MODE:
 *   collectives  allReduce (sum, avg, max), broadcast, allGather and barrier (rank 1 comes to
 *                the barrier 300 ms late; rank 0 counts its event loop's turns meanwhile);
 *                OUT gets the results
 *   ddp          DistributedDataParallel on this rank's half of the recipe's batch for
 *                OPTIONS.steps steps (OPTIONS.bn 'train' | 'eval'); OUT gets every parameter and
 *                buffer (rank 0) — ranks other than 0 start perturbed
 *   die          as ddp, but rank 1 exits (code 7) before its second step
 *   train        trainEarlyExit on a DistributedDataParallel: 40 seeded samples, batches of
 *                4 per rank, one epoch, then DistributedDataParallel.saveCheckpoint to
 *                OPTIONS.checkpoint + '-r' + rank and a load of rank 0's; OUT gets the
 *                parameters, the batches seen and how far the loaded parameters are from its own
 * Errors go to stderr and exit 1.
 */
const fs = require('fs');
const [lib, fixtures, port, rank, world, mode, out, optionsJson] = process.argv.slice(2);
const library = require(lib);
const recipe = require('./ddp-recipe');
const { distributed, torch } = library;
const options = JSON.parse(optionsJson || '{}');

async function collectives() {
  const r = distributed.getRank();
  const sum = torch.tensor([1, 2, 3], { dtype: 'float32' }).mul(r + 1);
  await distributed.allReduce(sum, 'sum');
  const avg = torch.tensor([1, 2, 3], { dtype: 'float32' }).mul(r + 1);
  await distributed.allReduce(avg, 'avg');
  const max = torch.tensor([r, -r], { dtype: 'int64' });
  await distributed.allReduce(max, 'max');
  const fromLast = torch.tensor([10 * r + 1], { dtype: 'float32' });
  await distributed.broadcast(fromLast, distributed.getWorldSize() - 1);
  const gathered = await distributed.allGather(torch.tensor([r, r * r], { dtype: 'int64' }));
  if (r === 1) await new Promise((resolve) => setTimeout(resolve, 300));
  let turns = 0;
  const ticker = setInterval(() => turns++, 10);
  await distributed.barrier();
  clearInterval(ticker);
  const data = (t) => Array.from(t.data(), Number);
  return { sum: data(sum), avg: data(avg), max: data(max), fromLast: data(fromLast), gathered: gathered.map(data), turns };
}

async function ddp(die) {
  const r = distributed.getRank();
  const model = recipe.makeModel(library, fixtures, { perturb: r !== 0, bn: options.bn });
  const ddp = new distributed.DistributedDataParallel(model);
  const optimizer = recipe.makeOptimizer(library, model);
  const { x, y } = recipe.makeData(library);
  const half = recipe.SETTINGS.batch / distributed.getWorldSize();
  const [mx, my] = [x.narrow(0, r * half, half), y.narrow(0, r * half, half)];
  for (let step = 0; step < options.steps; step++) {
    if (die && r === 1 && step === 1) process.exit(7);
    const loss = recipe.loss(library, ddp.forward(mx), my);
    optimizer.zeroGrad();
    loss.backward();
    optimizer.step();
  }
  return { snapshot: recipe.snapshot(model), buckets: ddp.buckets() };
}

async function train() {
  const model = recipe.makeModel(library, fixtures, { perturb: distributed.getRank() !== 0 });
  const ddp = new distributed.DistributedDataParallel(model);
  torch.manualSeed(9);
  const data = { images: torch.randn([40, 3, 32, 32]), labels: torch.randint(0, 10, [40]) };
  let batches = 0;
  library.trainEarlyExit(ddp, data, { epochs: 1, batchSize: 4, lossWeights: recipe.SETTINGS.lossWeights, seed: 2, onBatch: () => batches++ });
  await ddp.saveCheckpoint(`${options.checkpoint}-r${distributed.getRank()}`);
  const loaded = library.loadCheckpoint(`${options.checkpoint}-r0`).model;
  // Parameters only: batch-norm statistics stay each rank's own until the next forward's broadcast.
  const theirs = Object.fromEntries(loaded.namedParameters());
  const loadedDiff = Math.max(...model.namedParameters().map(([n, t]) => t.sub(theirs[n]).abs().max().item()));
  return { snapshot: recipe.snapshot(model), batches, loadedDiff };
}

(async () => {
  await distributed.initProcessGroup({
    initMethod: `tcp://127.0.0.1:${port}`, rank: Number(rank), worldSize: Number(world), timeoutMs: options.timeoutMs ?? 20000,
  });
  const result = mode === 'collectives' ? await collectives() : mode === 'train' ? await train() : await ddp(mode === 'die');
  fs.writeFileSync(out, JSON.stringify(result));
  distributed.destroyProcessGroup();
})().catch((error) => {
  process.stderr.write(`rank ${rank}: ${error.message}\n`);
  process.exit(1);
});
