/**
 * Files made by the other PyTorch: test/fixtures/torch-<version>/ holds what the other
 * LibTorch's environment made with its own PyTorch (scripts/debian-root.sh exchange puts
 * them there; CI always does, and sets TEE_REQUIRE_CROSS=1 so that their absence fails).
 * TorchScript saved by PyTorch 2.6 must load, run and take exits in the 1.13 build equal to
 * 2.6's own reference, and the reverse; a state dict saved by the other Python must load.
 */
import * as fs from 'fs';
import * as path from 'path';
import { EarlyExitModel, Tensor, jit, nn, torch } from '../lib';
import { CAN_EXPORT, FIXTURES, fromRef, maxAbsDiff } from './helpers';

const here = fs.readFileSync(path.join(FIXTURES, 'TORCH_VERSION'), 'utf8').trim();
const foreign = fs.existsSync(FIXTURES)
  ? fs.readdirSync(FIXTURES).filter((name) => /^torch-\d/.test(name) && name !== `torch-${here}`).sort()
  : [];

if (foreign.length === 0) {
  const reason = `no fixtures made by another PyTorch in ${FIXTURES}/torch-<version>/ ` +
    '(bash scripts/debian-root.sh exchange trixie sid makes them; CI runs it)';
  if (process.env.TEE_REQUIRE_CROSS === '1') {
    it('has the fixtures of the other PyTorch', () => { throw new Error(reason); });
  } else {
    it.skip(`files of another PyTorch (skipped: ${reason})`, () => undefined);
  }
}

if (foreign.length > 0) describe.each(foreign)('files made by %s, in LibTorch ' + torch.version.libtorch, (folder) => {
  const dir = path.join(FIXTURES, folder);
  const reference = JSON.parse(fs.readFileSync(path.join(dir, 'resnet20_reference.json'), 'utf8'));
  const branch = (): nn.Sequential => {
    const made = nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10));
    made.loadStateDict(torch.load(path.join(dir, 'branch_state_dict.pt')));
    return made.eval();
  };

  it.each(['scripted', 'traced'])("a %s ResNet-20 gives that PyTorch's output and exit", (kind) => {
    const model = new EarlyExitModel(jit.load(path.join(dir, `resnet20_${kind}.pt`)), [['layer1.2.relu2', branch()]]).eval();
    const [exit0, final] = torch.noGrad(() => model.forward(fromRef(reference.input))) as Tensor[];
    expect(maxAbsDiff(final, reference.exit.final_output)).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff(exit0, reference.exit.exit_output)).toBeLessThanOrEqual(1e-5);
    // An exit every sample meets stops the forward there, with the same exit output.
    const stopped = torch.noGrad(() => model.forwardEarlyExit(fromRef(reference.input), { criterion: 'maxProbability', thresholds: [0] }));
    expect(stopped.exit).toBe(0);
    expect(maxAbsDiff(stopped.output, reference.exit.exit_output)).toBeLessThanOrEqual(1e-5);
  });

  const exportedFile = path.join(dir, 'resnet20_exported.pt2');
  (fs.existsSync(exportedFile) ? it : it.skip)(`its exported program (torch.export) ${CAN_EXPORT ? "gives that PyTorch's outputs" : 'is refused, naming LibTorch 2.6'}`, () => {
    if (!CAN_EXPORT) {
      expect(() => torch.export.load(exportedFile)).toThrow(/exported programs \(torch.export\) need LibTorch 2.6 or later/);
      return;
    }
    const exported = JSON.parse(fs.readFileSync(path.join(dir, 'exported_reference.json'), 'utf8'));
    const model = torch.export.load(exportedFile);
    for (const item of exported.cases) {
      expect(maxAbsDiff(torch.noGrad(() => model.forward(fromRef(item.input))), item.output)).toBeLessThanOrEqual(1e-5);
    }
  });

  it("its text encoder (TorchScript, and exported where both sides have torch.export) gives that PyTorch's outputs at every layer", () => {
    const text = JSON.parse(fs.readFileSync(path.join(dir, 'text_encoder_reference.json'), 'utf8'));
    const files = [path.join(dir, 'text_encoder_scripted.pt'), path.join(dir, 'text_encoder_exported.pt2')].filter((file) => fs.existsSync(file));
    for (const file of CAN_EXPORT ? files : files.slice(0, 1)) {
      const points = Object.keys(text.hooks);
      const backbone = file.endsWith('.pt2') ? torch.export.load(file) : jit.load(file);
      const model = new EarlyExitModel(backbone, points.map((point) => [point, nn.Identity()])).eval();
      const outputs = torch.noGrad(() => model.forward(fromRef(text.input)));
      points.forEach((point, i) => expect([file, point, maxAbsDiff(outputs[i], text.hooks[point]) <= 1e-5]).toEqual([file, point, true]));
      expect(maxAbsDiff(outputs[points.length], text.output)).toBeLessThanOrEqual(1e-5);
    }
  });

  it("its Python's torch.save of a state dict loads value for value", () => {
    const loaded = torch.load(path.join(dir, 'branch_state_dict.pt')) as Record<string, Tensor>;
    expect(Object.keys(loaded)).toEqual(Object.keys(reference.exit.branch_state_dict));
    for (const [key, value] of Object.entries(reference.exit.branch_state_dict)) {
      expect(maxAbsDiff(loaded[key], value as never)).toBe(0);
    }
  });
});
