/**
 * Distiller's early-exit example (shared/seed/distiller-early-exit.txt), line for line in
 * TypeScript, on the CIFAR ResNet-20 fixture: attach an exit at `layer1.2.relu2`, run a
 * forward, and get `[exitOutput, finalOutput]`.
 *
 *   node dist/examples/seed-example.js [model.pt]
 */
import * as path from 'path';
import { EarlyExitMgr, ScriptModule, Tensor, jit, nn, torch } from '../lib';

const NUM_CLASSES = 10;

function getExitsDef(): Array<[string, nn.Module]> {
  return [['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, NUM_CLASSES))]];
}

/** The seed's ResNetCifarEarlyExit, around a loaded TorchScript ResNet. */
class ResNetCifarEarlyExit {
  readonly eeMgr = new EarlyExitMgr();

  constructor(readonly model: ScriptModule) {
    this.eeMgr.attachExits(model, getExitsDef());
  }

  forward(x: Tensor): Tensor[] {
    this.eeMgr.deleteExitsOutputs(this.model);
    // Run the input through the network (including exits)
    const output = this.model.forward(x) as Tensor;
    return [...this.eeMgr.getExitsOutputs(this.model), output];
  }
}

function main(): void {
  const file = process.argv[2] ?? path.join(__dirname, '..', '..', 'test', 'fixtures', 'resnet20_scripted.pt');
  torch.manualSeed(0);
  const backbone = jit.load(file).eval();
  const modules = backbone.namedModules();
  console.log(`loaded ${file}: ${modules.length} modules, ${backbone.parameters().length} parameter tensors`);
  console.log(`named modules: ${modules.slice(0, 8).map(([name]) => `'${name}'`).join(', ')}, ...`);

  const model = new ResNetCifarEarlyExit(backbone);
  const images = torch.randn([4, 3, 32, 32]);
  const [exit0, final] = torch.noGrad(() => model.forward(images));
  console.log(`exit at ${model.eeMgr.exitPoints[0]}: output ${JSON.stringify(exit0.shape)}, ` +
    `final output ${JSON.stringify(final.shape)}`);
  console.log(`exit predictions:  ${exit0.argmax(1).toArray()}`);
  console.log(`final predictions: ${final.argmax(1).toArray()}`);
}

main();
