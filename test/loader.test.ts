import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { torch } from '../lib';
import { baseVersion, chooseBinary, findRuntimeLibTorch, missingLibraryRemedy, parsePrebuildName, prebuildName } from '../lib/libtorch';

const ROOT = path.join(__dirname, '..');

function fakePackage(files: Record<string, string>): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tee-loader-'));
  for (const [file, source] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
    fs.copyFileSync(source, path.join(root, file));
  }
  return root;
}

function realBinary(): string {
  const { found } = findRuntimeLibTorch();
  const choice = chooseBinary(ROOT, found);
  if (!choice.file) throw new Error(`no addon binary in ${ROOT}: ${choice.refused.join('; ')}`);
  return choice.file;
}

describe('finding LibTorch and the binary that fits it', () => {
  it('finds the LibTorch this process runs with, at the version the addon reports', () => {
    const { found } = findRuntimeLibTorch();
    expect(found).not.toBeNull();
    expect(found!.version).toBe(baseVersion(torch.version.libtorch));
    expect(baseVersion(torch.version.loaded)).toBe(found!.version);
    expect(fs.existsSync(path.join(found!.libDir, 'libtorch.so'))).toBe(true);
  });

  it('reads versions and prebuilt names', () => {
    expect(baseVersion('1.13.0a0')).toBe('1.13.0');
    expect(baseVersion('2.1.0+cu121\n')).toBe('2.1.0');
    expect(baseVersion('2.3')).toBe('2.3.0');
    expect(() => baseVersion('unknown')).toThrow(/cannot read a LibTorch version/);
    expect(parsePrebuildName(prebuildName('2.1.0', 'cuda'))).toEqual({ file: 'torch-early-exit.libtorch-2.1.0.cuda.node', version: '2.1.0', flavour: 'cuda' });
    expect(parsePrebuildName('torch-early-exit.napi.node')).toBeNull();
  });

  it('takes the prebuilt binary that matches the LibTorch found', () => {
    const { found } = findRuntimeLibTorch();
    const platform = `${process.platform}-${os.arch()}`;
    const name = prebuildName(found!.version, found!.flavour);
    const root = fakePackage({ [`prebuilds/${platform}/${name}`]: realBinary() });
    expect(chooseBinary(root, found).file).toBe(path.join(root, 'prebuilds', platform, name));
  });

  it('says which binary it took and why, and which it passed over', () => {
    const { found } = findRuntimeLibTorch();
    const platform = `${process.platform}-${os.arch()}`;
    const name = prebuildName(found!.version, found!.flavour);
    const root = fakePackage({ [`prebuilds/${platform}/${prebuildName('9.9.0', 'cpu')}`]: realBinary(), [`prebuilds/${platform}/${name}`]: realBinary() });
    const choice = chooseBinary(root, found);
    expect(choice.file).toBe(path.join(root, 'prebuilds', platform, name));
    expect(choice.reason).toBe(`the prebuilt binary for LibTorch ${found!.version} (${found!.flavour}) matches the LibTorch found: ` +
      `${found!.version} (${found!.flavour}, ${found!.kind} at ${found!.libDir})`);
    expect(choice.refused).toContain(`prebuilds/${platform}/torch-early-exit.libtorch-9.9.0.cpu.node: built for LibTorch 9.9.0 (cpu), ` +
      `but the LibTorch found is ${found!.version} (${found!.flavour}, ${found!.kind} at ${found!.libDir})`);
    // This process says which binary it loaded: the local build where there is one (a
    // developer's tree), else the prebuilt binary of this LibTorch (after scripts/setup.sh,
    // whose prebuild step leaves no build/Release).
    const local = path.join(ROOT, 'build', 'Release', 'torch_early_exit.node');
    if (fs.existsSync(local)) {
      expect(torch.version.binary.file).toBe(local);
      expect(torch.version.binary.reason).toBe('a local build (build/Release) comes before prebuilt binaries');
    } else {
      expect(torch.version.binary.file).toBe(path.join(ROOT, 'prebuilds', platform, name));
      expect(torch.version.binary.reason).toMatch(/^the prebuilt binary for LibTorch \S+ \(cpu\) matches the LibTorch found/);
    }
  });

  it("takes the CPU binary of the same version for a CUDA LibTorch, and says why; an exact match comes first", () => {
    const { found } = findRuntimeLibTorch();
    const cuda = { ...found!, flavour: 'cuda' as const };
    const platform = `${process.platform}-${os.arch()}`;
    const cpuName = prebuildName(found!.version, 'cpu');
    const root = fakePackage({ [`prebuilds/${platform}/${cpuName}`]: realBinary() });
    const choice = chooseBinary(root, cuda);
    expect(choice.file).toBe(path.join(root, 'prebuilds', platform, cpuName));
    expect(choice.reason).toMatch(new RegExp(`^the CPU binary of LibTorch ${found!.version.replace(/\./g, '\\.')} serves the CUDA LibTorch of the same version`));
    const both = fakePackage({ [`prebuilds/${platform}/${cpuName}`]: realBinary(), [`prebuilds/${platform}/${prebuildName(found!.version, 'cuda')}`]: realBinary() });
    expect(chooseBinary(both, cuda).file).toBe(path.join(both, 'prebuilds', platform, prebuildName(found!.version, 'cuda')));
    expect(chooseBinary(both, cuda).refused).toContain(`prebuilds/${platform}/${cpuName}: built for LibTorch ${found!.version} (cpu), ` +
      `but the LibTorch found is ${found!.version} (cuda, ${found!.kind} at ${found!.libDir})`);
  });

  it('names a library LibTorch needs and lacks (as with Debian\'s CUDA LibTorch without cuDNN)', () => {
    // The dynamic loader's words, as Node reported them for the 2.6 binary in a Debian 13 root
    // with libtorch-cuda-2.6 and no cuDNN.
    expect(missingLibraryRemedy('libcudnn.so.9: cannot open shared object file: No such file or directory')).toBe(
      "LibTorch needs libcudnn.so.9, which is not installed: install it (Debian's CUDA LibTorch takes cuDNN from the nvidia-cudnn " +
      'package, which downloads it from NVIDIA), or use a CPU LibTorch.');
    expect(missingLibraryRemedy('/x/torch_early_exit.node: cannot open shared object file: No such file or directory')).toBeNull();
    expect(missingLibraryRemedy('undefined symbol: _ZN3c105ErrorC2E')).toBeNull();
  });

  it('refuses a prebuilt binary tagged for another LibTorch version, with the reason and the fix', () => {
    const { found } = findRuntimeLibTorch();
    const platform = `${process.platform}-${os.arch()}`;
    const root = fakePackage({ [`prebuilds/${platform}/${prebuildName('9.9.0', 'cpu')}`]: realBinary() });
    const choice = chooseBinary(root, found);
    expect(choice.file).toBeNull();
    expect(choice.refused[2]).toBe(`prebuilds/${platform}/torch-early-exit.libtorch-9.9.0.cpu.node: built for LibTorch 9.9.0 (cpu), ` +
      `but the LibTorch found is ${found!.version} (${found!.flavour}, ${found!.kind} at ${found!.libDir})`);
    // The package's loader, run in a fresh process from that folder, fails with the message instead of crashing.
    fs.mkdirSync(path.join(root, 'dist'), { recursive: true });
    fs.cpSync(path.join(ROOT, 'dist', 'lib'), path.join(root, 'dist', 'lib'), { recursive: true });
    fs.writeFileSync(path.join(root, 'package.json'), '{"name": "torch-early-exit"}');
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(root, 'node_modules'));
    const { spawnSync } = require('child_process') as typeof import('child_process');
    const result = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path.join(root, 'dist', 'lib'))})`], { encoding: 'utf8' });
    expect(result.status).toBe(1);
    expect(result.stderr).toContain('torch-early-exit: no native addon fits this machine. Looked for:');
    expect(result.stderr).toContain('built for LibTorch 9.9.0 (cpu)');
    expect(result.stderr).toContain('npm run build:native');
  });

  it('says what it tried when no LibTorch is found', () => {
    const { found, tried } = findRuntimeLibTorch({ LIBTORCH: '/nonexistent/libtorch' });
    expect(tried[0]).toBe('LIBTORCH=/nonexistent/libtorch: no lib/libtorch.so');
    expect(found?.kind).not.toBe('LIBTORCH');
  });
});
