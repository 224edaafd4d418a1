import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.join(__dirname, '..');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

function npm(args: string[], cwd: string): string {
  return execFileSync(NPM, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 240000 });
}

describe('the npm package', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-pack-'));
  let tarball = '';

  beforeAll(() => {
    const prebuilds = path.join(ROOT, 'prebuilds', `${process.platform}-${os.arch()}`);
    if (!fs.existsSync(prebuilds) || fs.readdirSync(prebuilds).length === 0) {
      throw new Error('no prebuilt binary to pack: run `npm run prebuild` first (scripts/setup.sh does)');
    }
    // npm 10 prints an array of packed packages, npm 12 (Debian sid's) an object keyed by name.
    const printed = JSON.parse(npm(['pack', '--json', '--pack-destination', work], ROOT));
    const packed = Array.isArray(printed) ? printed[0] : printed['torch-early-exit'];
    tarball = path.join(work, packed.filename);
    (globalThis as any).packedFiles = packed.files.map((f: { path: string }) => f.path);
  });

  it('holds what users need and nothing else', () => {
    const files: string[] = (globalThis as any).packedFiles;
    expect(files).toEqual(expect.arrayContaining([
      'dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/esm/index.mjs', 'bin/torch-early-exit.js', 'models/mnist_cnn.pt',
      'CMakeLists.txt', 'native/addon.cc', 'scripts/install.js', 'scripts/build-native.js', 'scripts/find-libtorch.js',
      `prebuilds/${process.platform}-${os.arch()}/torch-early-exit.libtorch-${require(path.join(ROOT, 'dist', 'lib', 'libtorch')).findRuntimeLibTorch().found.version}.cpu.node`,
    ]));
    expect(files.filter((f) => /^(test|build|lib|examples)\//.test(f) || f.startsWith('dist/scripts') || f.endsWith('.map'))).toEqual([]);
  });

  // CI builds a binary in each LibTorch environment and gives each to the other
  // (scripts/debian-root.sh exchange): the tarball must carry every one it names.
  const required = (process.env.TEE_PACK_LIBTORCH ?? '').split(',').filter(Boolean);
  (required.length > 0 ? it : it.skip)(`carries the prebuilt binary of every LibTorch in TEE_PACK_LIBTORCH (${required.join(', ') || 'unset'})`, () => {
    const files: string[] = (globalThis as any).packedFiles;
    for (const version of required) {
      expect(files).toContain(`prebuilds/${process.platform}-${os.arch()}/torch-early-exit.libtorch-${version}.cpu.node`);
    }
  });

  it('installs with no build step and runs: require, load a model, attach an exit, forward; and ESM import', () => {
    const project = path.join(work, 'app');
    fs.mkdirSync(project);
    fs.writeFileSync(path.join(project, 'package.json'), '{"name": "app", "version": "1.0.0", "private": true}');
    npm(['install', '--ignore-scripts', '--no-audit', '--no-fund', tarball], project);
    const installed = path.join(project, 'node_modules', 'torch-early-exit');
    expect(fs.existsSync(path.join(installed, 'build'))).toBe(false);
    const model = path.join(__dirname, 'fixtures', 'resnet20_scripted.pt');
    const script = `
      const { jit, nn, torch, EarlyExitModel } = require('torch-early-exit');
      const model = new EarlyExitModel(jit.load(${JSON.stringify(model)}), [
        ['layer1.2.relu2', nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(1600, 10))]]).eval();
      const [exit0, final] = torch.noGrad(() => model.forward(torch.randn([2, 3, 32, 32])));
      console.log(JSON.stringify([exit0.shape, final.shape, model.forwardEarlyExit(torch.randn([1, 3, 32, 32]), { criterion: 'maxProbability', thresholds: [0] }).exit]));`;
    const out = execFileSync(process.execPath, ['-e', script], { cwd: project, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual([[2, 10], [2, 10], 0]);
    const esm = execFileSync(process.execPath, ['--input-type=module', '-e',
      "import { torch, jit, EarlyExitMgr } from 'torch-early-exit'; console.log(typeof jit.load, typeof EarlyExitMgr, torch.ones([2]).sum().item());"],
    { cwd: project, encoding: 'utf8' });
    expect(esm.trim()).toBe('function function 2');
    const help = execFileSync(path.join(project, 'node_modules', '.bin', 'torch-early-exit'), ['--help'], { cwd: project, encoding: 'utf8' });
    expect(help).toContain('Usage: torch-early-exit demo');
  });
});
