/**
 * The CPU block cache: freed large blocks are reused instead of page-faulted in again,
 * emptyCache() gives them back to the system, the limit holds, and TEE_CPU_CACHE_MB=0
 * turns it off. References come from elsewhere: the process's RSS as Linux counts it, and
 * the bytes of the tensors the test made.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { torch } from '../lib';
import { fixture } from './helpers';

const MB = 2 ** 20;
const LIB = path.join(__dirname, '..', 'dist', 'lib');

/** Runs `body` in a fresh Node process with `env`, where `torch` is the library's; returns its JSON output. */
function inChild(env: Record<string, string>, body: string): { status: number | null; stdout: string; stderr: string } {
  const script = `const { torch } = require(${JSON.stringify(LIB)}); ${body}`;
  return spawnSync(process.execPath, ['-e', script], { env: { ...process.env, ...env }, encoding: 'utf8', timeout: 60000 });
}

describe('CPU block cache', () => {
  it('serves a freed block again instead of new memory', () => {
    torch.ones([2 * MB]).dispose(); // 8 MB, so that its size class is in the cache
    const before = torch.memoryStats();
    expect(before.enabled).toBe(true);
    expect(before.cachedBytes).toBeGreaterThanOrEqual(8 * MB);
    const again = torch.ones([2 * MB]);
    const during = torch.memoryStats();
    expect(during.cacheHits).toBe(before.cacheHits + 1);
    expect(during.cacheMisses).toBe(before.cacheMisses);
    expect(during.reservedBytes).toBe(before.reservedBytes);
    expect(during.allocatedBytes - before.allocatedBytes).toBeGreaterThanOrEqual(8 * MB);
    expect(torch.tidy(() => again.sum().item())).toBe(2 * MB); // the reused block holds what was written now
    again.dispose();
    expect(torch.memoryStats().allocatedBytes).toBe(before.allocatedBytes);
  });

  it('a trained model freed gives its memory back to the system after emptyCache()', () => {
    // In a fresh process: RSS is the whole process's, and a jest worker that ran other files
    // first can hand back memory of its own (a trimmed heap) in the middle of the measurement.
    const run = inChild({}, `
      const { EarlyExitModel, jit, nn } = require(${JSON.stringify(LIB)});
      const rss = () => Number(/VmRSS:\\s+(\\d+) kB/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
      torch.emptyCache();
      const start = rss();
      torch.resetPeakMemoryStats();
      torch.tidy(() => {
        const model = new EarlyExitModel(jit.load(${JSON.stringify(fixture('resnet18_scripted.pt'))}),
          [['layer2', nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))]]).train();
        const outputs = model.forward(torch.randn([16, 3, 64, 64]));
        outputs.reduce((sum, out) => sum.add(out.sum()), torch.zeros([])).backward();
        model.backbone.dispose();
      });
      const stats = torch.memoryStats();
      const held = rss();
      const released = torch.emptyCache();
      console.log(JSON.stringify({ start, stats, held, released, cachedAfter: torch.memoryStats().cachedBytes, after: rss() }));`);
    expect(run.stderr).toBe('');
    const { start, stats, held, released, cachedAfter, after } = JSON.parse(run.stdout);
    expect(stats.peakAllocatedBytes).toBeGreaterThan(100 * MB);
    expect(stats.cachedBytes).toBeGreaterThan(50 * MB);
    expect(held - start).toBeGreaterThan(0.5 * stats.cachedBytes); // the cache keeps its blocks resident
    expect(released).toBe(stats.cachedBytes);
    expect(cachedAfter).toBe(0);
    expect(held - after).toBeGreaterThan(0.8 * released);
  });

  it('keeps no more than TEE_CPU_CACHE_MB of free blocks', () => {
    const run = inChild({ TEE_CPU_CACHE_MB: '16' }, `
      const tensors = Array.from({ length: 10 }, () => torch.ones([MB]));
      for (const t of tensors) t.dispose();
      console.log(JSON.stringify(torch.memoryStats()));`.replace(/MB/g, String(MB)));
    expect(run.stderr).toBe('');
    const stats = JSON.parse(run.stdout);
    expect(stats.limitBytes).toBe(16 * MB);
    // All ten were alive at once: each holds a block of one size class.
    const block = stats.peakReservedBytes / 10;
    expect(block).toBeGreaterThanOrEqual(4 * MB);
    const kept = Math.floor((16 * MB) / block);
    expect(stats.cachedBytes).toBe(kept * block);
    expect(stats.releasedOverLimit).toBe(10 - kept);
  });

  it('TEE_CPU_CACHE_MB=0 turns it off; a setting that is not a number stops the load with its name', () => {
    const off = inChild({ TEE_CPU_CACHE_MB: '0' }, `
      torch.ones([${2 * MB}]).dispose();
      console.log(JSON.stringify(torch.memoryStats()));`);
    const stats = JSON.parse(off.stdout);
    expect(stats).toMatchObject({ enabled: false, limitBytes: 0, cachedBytes: 0, reservedBytes: 0, cacheHits: 0 });
    expect(stats.allocatedBytes).toBeLessThan(MB);
    const bad = inChild({ TEE_CPU_CACHE_MB: '2GB' }, 'console.log("loaded")');
    expect(bad.status).not.toBe(0);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toMatch(/TEE_CPU_CACHE_MB must be a whole number of megabytes .*not '2GB'/);
  });
});
