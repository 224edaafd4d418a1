/**
 * What the forward-hook mechanism costs on ResNet-20 (CIFAR, Distiller's module names),
 * paired step by step by the shared harness (two processes taking turns on one CPU, one
 * intra-op thread, torch.noGrad, eval mode):
 *
 *   exit vs hand-made   EarlyExitModel's forward with the seed's exit at 'layer1.2.relu2'
 *                       (nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10)))
 *                       against the same work done by hand: the loaded model's forward,
 *                       then the branch on that point's features. The ratio minus one is
 *                       the mechanism's own cost; the goal is under 2%.
 *   identity vs plain   EarlyExitModel's forward with nn.Identity() as the exit there,
 *                       against the loaded model's forward: the mechanism with a branch
 *                       that computes nothing.
 *
 * The outputs of each pair are compared first (the hand-made side's branch runs on the
 * features a Python-style hook saw, so both compute the same numbers).
 *
 *   npm run bench:hooks -- [--steps N] [--batches 1,64] [--fixtures scripted,traced] [--allocator ...] [--json FILE]
 */
import * as fs from 'fs';
import * as path from 'path';
import { EarlyExitModel, Tensor, jit, nn, torch } from '../lib';
import { packageRoot } from '../lib/util/package-root';
import { Environment, Pair, Side, allocatorSetting, describeEnvironment, ratioTable, runPairs, serveSide } from './bench-harness';
import { median } from './bench-stats';
import { flagValue, jsonFile, positiveInt } from './script-args';

const EXIT_POINT = 'layer1.2.relu2';

type Variant = 'exit' | 'handMade' | 'identity' | 'plain';

function hooksSide(options: Record<string, unknown>): Side {
  const { fixture, batch, variant } = options as { fixture: string; batch: number; variant: Variant };
  torch.setNumThreads(1);
  const file = path.join(packageRoot(), 'test', 'fixtures', `resnet20_${fixture}.pt`);
  if (!fs.existsSync(file)) throw new Error(`no fixture ${file}: run \`npm run fixtures\` first`);
  const backbone = jit.load(file).eval();
  torch.manualSeed(0); // the same branch weights and input on both sides
  const branch = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10)).eval();
  const input = torch.randn([batch, 3, 32, 32]);
  let features: Tensor | undefined;
  const handle = backbone.getModule(EXIT_POINT).registerForwardHook((_m, _i, output) => { features = torch.keep((output as Tensor).clone()); });
  torch.noGrad(() => torch.tidy(() => { backbone.forward(input); }));
  handle.remove();
  const model = variant === 'exit' ? new EarlyExitModel(backbone, [[EXIT_POINT, branch]]).eval()
    : variant === 'identity' ? new EarlyExitModel(backbone, [[EXIT_POINT, nn.Identity()]]).eval() : undefined;
  const run = (): Tensor[] => {
    if (model) return model.forward(input);
    const final = backbone.forward(input) as Tensor;
    return variant === 'handMade' ? [branch.forward(features!), final] : [features!, final];
  };
  return {
    step: () => torch.noGrad(() => torch.tidy(() => { run(); })),
    output: () => torch.noGrad(() => torch.tidy(() => run().flatMap((t) => Array.from(t.data() as Float32Array)))),
    describe: `ResNet-20 ${fixture}, batch ${batch}`,
  };
}

serveSide({ hooks: hooksSide });

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const flag = (name: string) => flagValue(args, name);
  const steps = flag('--steps') === undefined ? 40 : positiveInt('--steps', flag('--steps'));
  const batches = (flag('--batches') ?? '1,64').split(',').map((b) => positiveInt('--batches', b));
  const fixtures = (flag('--fixtures') ?? 'scripted,traced').split(',');
  for (const f of fixtures) if (f !== 'scripted' && f !== 'traced') throw new Error(`unknown fixture '${f}' (scripted, traced)`);
  const environment: Environment = { threads: 1, allocator: allocatorSetting(flag('--allocator'), 'as-installed') };
  const json = args.includes('--json') ? jsonFile(flag('--json')) : undefined;

  const side = (fixture: string, batch: number, variant: Variant) => ({ factory: 'hooks', options: { fixture, batch, variant } });
  const pairs: Pair[] = fixtures.flatMap((fixture) => batches.flatMap((batch) => {
    const timing = { steps, warmup: 5, repeat: batch === 1 ? 30 : 3, tolerance: 1e-5 };
    return [
      { name: `${fixture}, batch ${batch}: exit vs forward + branch by hand`, a: side(fixture, batch, 'exit'), b: side(fixture, batch, 'handMade'), ...timing },
      { name: `${fixture}, batch ${batch}: identity exit vs plain forward`, a: side(fixture, batch, 'identity'), b: side(fixture, batch, 'plain'), ...timing },
    ];
  }));
  console.log(`bench:hooks: the forward-hook mechanism's cost on ResNet-20, torch.noGrad, eval; LibTorch ${torch.version.libtorch}`);
  console.log(describeEnvironment(environment));
  console.log('the mechanism costs (ratio - 1); the goal is under 2%.\n');
  const results = await runPairs(__filename, pairs, environment, (line) => console.error(line));
  console.log(ratioTable(results, 'with exit', 'without'));
  const cost = results.filter((r) => r.name.includes('by hand')).map((r) => (median(r.ratios) - 1) * 100);
  console.log(`\nmechanism cost: ${cost.map((c) => `${c >= 0 ? '+' : ''}${c.toFixed(2)}%`).join(', ')} (goal < 2%: ${cost.every((c) => c < 2) ? 'yes' : 'NO'})`);
  if (json) fs.writeFileSync(json, JSON.stringify({ benchmark: 'bench:hooks', environment, results }, null, 2) + '\n');
}

if (process.env.TEE_BENCH_SIDE !== '1') {
  main().catch((error) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
