/**
 * Finding LibTorch at run time, and the addon binary that fits it: a prebuilt binary
 * tagged with the LibTorch version and flavour it was built against, else a local build.
 * LibTorch itself is never bundled; it comes from Debian's libtorch-dev, an unpacked
 * LibTorch named by LIBTORCH, or a pip-installed PyTorch.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

export type Flavour = 'cpu' | 'cuda';

/** A LibTorch installation that the addon can load. */
export interface RuntimeLibTorch {
  kind: 'LIBTORCH' | 'system' | 'pip';
  /** The folder of libtorch.so. */
  libDir: string;
  /** major.minor.patch, without local suffixes (`2.1.0+cu121` -> `2.1.0`). */
  version: string;
  flavour: Flavour;
}

/** A prebuilt binary file name: `torch-early-exit.libtorch-1.13.0.cpu.node`. */
export interface PrebuildTag {
  file: string;
  version: string;
  flavour: Flavour;
}

const MULTIARCH: Record<string, string> = { x64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' };

/** The file name a prebuilt binary gets for a LibTorch. */
export function prebuildName(version: string, flavour: Flavour): string {
  return `torch-early-exit.libtorch-${version}.${flavour}.node`;
}

export function parsePrebuildName(file: string): PrebuildTag | null {
  const match = /^torch-early-exit\.libtorch-(\d+\.\d+\.\d+)\.(cpu|cuda)\.node$/.exec(path.basename(file));
  return match ? { file, version: match[1], flavour: match[2] as Flavour } : null;
}

/** `1.13.0a0`, `2.1.0+cu121` -> `1.13.0`, `2.1.0`. */
export function baseVersion(version: string): string {
  const match = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(version.trim());
  if (!match) throw new Error(`cannot read a LibTorch version from '${version}'`);
  return `${match[1]}.${match[2]}.${match[3] ?? '0'}`;
}

/** `libtorch.so` itself, or a versioned `libtorch.so.X.Y` of a runtime package with no -dev package beside it. */
function findLibrary(libDir: string, name: string): string | null {
  if (fs.existsSync(path.join(libDir, name))) return path.join(libDir, name);
  if (!fs.existsSync(libDir)) return null;
  const versioned = fs.readdirSync(libDir).filter((file) => file.startsWith(`${name}.`) && /^\.\d+(\.\d+)*$/.test(file.slice(name.length)));
  versioned.sort((a, b) => a.length - b.length);
  return versioned.length > 0 ? path.join(libDir, versioned[0]) : null;
}

function flavourOf(libDir: string): Flavour {
  return findLibrary(libDir, 'libtorch_cuda.so') ? 'cuda' : 'cpu';
}

function fromLibtorchEnv(dir: string, tried: string[]): RuntimeLibTorch | null {
  const libDir = path.join(dir, 'lib');
  if (!fs.existsSync(path.join(libDir, 'libtorch.so'))) {
    tried.push(`LIBTORCH=${dir}: no lib/libtorch.so`);
    return null;
  }
  const versionFile = path.join(dir, 'build-version');
  if (!fs.existsSync(versionFile)) {
    tried.push(`LIBTORCH=${dir}: no build-version file to tell its version`);
    return null;
  }
  return { kind: 'LIBTORCH', libDir, version: baseVersion(fs.readFileSync(versionFile, 'utf8')), flavour: flavourOf(libDir) };
}

function fromSystem(tried: string[]): RuntimeLibTorch | null {
  const dirs = [`/usr/lib/${MULTIARCH[os.arch()] ?? ''}`, '/usr/lib', '/usr/local/lib'];
  for (const libDir of dirs) {
    const library = findLibrary(libDir, 'libtorch.so');
    if (!library) continue;
    // Debian's libtorch.so links to libtorch.so.1.13 and on to libtorch.so.1.13.0.
    const real = path.basename(fs.realpathSync(library));
    const match = /libtorch\.so\.(\d+\.\d+(?:\.\d+)?)$/.exec(real);
    if (match) return { kind: 'system', libDir, version: baseVersion(match[1]), flavour: flavourOf(libDir) };
    tried.push(`system: ${library} carries no version in its name (${real})`);
  }
  tried.push(`system: no libtorch.so in ${dirs.join(', ')}`);
  return null;
}

function fromPip(tried: string[]): RuntimeLibTorch | null {
  for (const python of ['python3', '/usr/bin/python3']) {
    try {
      const out = execFileSync(python, ['-c', 'import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))'],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60000 }).trim().split('\n');
      const libDir = path.join(out[1], 'lib');
      if (fs.existsSync(path.join(libDir, 'libtorch.so'))) {
        return { kind: 'pip', libDir, version: baseVersion(out[0]), flavour: flavourOf(libDir) };
      }
      tried.push(`${python}: torch ${out[0]} has no lib/libtorch.so`);
    } catch {
      tried.push(`${python}: no importable torch`);
    }
  }
  return null;
}

/**
 * The LibTorch to run with, in the build's order of preference: LIBTORCH, then the
 * system's, then a pip-installed PyTorch (asked last: importing torch takes seconds).
 */
export function findRuntimeLibTorch(env: NodeJS.ProcessEnv = process.env): { found: RuntimeLibTorch | null; tried: string[] } {
  const tried: string[] = [];
  const found = (env.LIBTORCH ? fromLibtorchEnv(env.LIBTORCH, tried) : null) ?? fromSystem(tried) ?? fromPip(tried);
  return { found, tried };
}

/** Where an addon binary may be, and whether it fits the LibTorch found. */
export interface BinaryChoice {
  file: string | null;
  /** What was looked at and why it was not taken, for the error message. */
  refused: string[];
  /** Why `file` was taken (empty when none was). */
  reason: string;
}

/**
 * The binary to load from the package at `root`: a local build (made by `npm run
 * build:native` or by an install that found no fitting prebuilt binary, so the freshest),
 * else a prebuilt one for this platform whose LibTorch version and flavour match
 * `runtime`. A prebuilt binary for another LibTorch is refused, never loaded: its symbols
 * would not match.
 */
export function chooseBinary(root: string, runtime: RuntimeLibTorch | null, platform = `${process.platform}-${os.arch()}`): BinaryChoice {
  const refused: string[] = [];
  for (const local of ['Release', 'Debug']) {
    const file = path.join(root, 'build', local, 'torch_early_exit.node');
    if (fs.existsSync(file)) return { file, refused, reason: `a local build (build/${local}) comes before prebuilt binaries` };
    refused.push(`build/${local}/torch_early_exit.node: not built`);
  }
  const folder = path.join(root, 'prebuilds', platform);
  const prebuilt = fs.existsSync(folder) ? fs.readdirSync(folder).map(parsePrebuildName).filter((t): t is PrebuildTag => t !== null) : [];
  // A CPU binary serves a CUDA LibTorch of the same version: the addon's code is
  // device-agnostic, it needs only libtorch, libtorch_cpu and libc10, which both flavours
  // export alike, and CUDA comes in with libtorch.so. An exact match still comes first.
  const exact = prebuilt.find((tag) => runtime && tag.version === runtime.version && tag.flavour === runtime.flavour);
  const cpuForCuda = prebuilt.find((tag) => runtime?.flavour === 'cuda' && tag.version === runtime.version && tag.flavour === 'cpu');
  const chosen = exact ?? cpuForCuda;
  for (const tag of prebuilt) {
    if (tag === chosen) continue;
    refused.push(`prebuilds/${platform}/${tag.file}: built for LibTorch ${tag.version} (${tag.flavour}), ` +
      (runtime ? `but the LibTorch found is ${runtime.version} (${runtime.flavour}, ${runtime.kind} at ${runtime.libDir})` : 'but no LibTorch was found'));
  }
  if (chosen && runtime) {
    const found = `${runtime.version} (${runtime.flavour}, ${runtime.kind} at ${runtime.libDir})`;
    const reason = chosen === exact
      ? `the prebuilt binary for LibTorch ${chosen.version} (${chosen.flavour}) matches the LibTorch found: ${found}`
      : `the CPU binary of LibTorch ${chosen.version} serves the CUDA LibTorch of the same version (its code is device-agnostic ` +
        `and every symbol it needs is in libtorch, libtorch_cpu and libc10, which both export); the LibTorch found: ${found}`;
    return { file: path.join(folder, chosen.file), refused, reason };
  }
  if (prebuilt.length === 0) refused.push(`prebuilds/${platform}/: no prebuilt binary`);
  return { file: null, refused, reason: '' };
}

/**
 * Makes LibTorch's libraries resolvable for the addon without LD_LIBRARY_PATH: loads them
 * globally from `libDir` first, so the addon's dependencies resolve to them by soname.
 */
export function preloadLibTorch(runtime: RuntimeLibTorch): void {
  if (runtime.kind === 'system') return;
  const flags = os.constants.dlopen.RTLD_NOW | os.constants.dlopen.RTLD_GLOBAL;
  for (const name of ['libc10.so', 'libc10_cuda.so', 'libtorch_cpu.so', 'libtorch_cuda.so', 'libtorch.so']) {
    const file = path.join(runtime.libDir, name);
    if (!fs.existsSync(file)) continue;
    try {
      process.dlopen({ exports: {} } as NodeJS.Module, file, flags);
    } catch (error) {
      // Not an addon, so Node complains after loading it; the library stays loaded.
      if (!/self-register|did not self-register|Module did not/.test((error as Error).message)) throw error;
    }
  }
}

/**
 * What to do when the addon could not be loaded because a library LibTorch needs is missing
 * (the dynamic loader's "X: cannot open shared object file"): no build of the addon helps
 * then. Null for any other failure.
 */
export function missingLibraryRemedy(loadError: string): string | null {
  const missing = /([\w.+-]+\.so[.\d]*): cannot open shared object file/.exec(loadError)?.[1];
  if (!missing || /torch_early_exit|torch-early-exit/.test(missing)) return null;
  return `LibTorch needs ${missing}, which is not installed: install it` +
    (missing.startsWith('libcudnn') ? " (Debian's CUDA LibTorch takes cuDNN from the nvidia-cudnn package, which downloads it from NVIDIA)" : '') +
    ', or use a CPU LibTorch.';
}
