/**
 * The dynamic batcher against a fake clock: when batches start and how large they are,
 * concurrency, the queue's bounds, timeouts, close(), early release and failures.
 */
import { BatchRunner, Clock, DynamicBatcher, Pending } from '../lib/serving/batcher';
import { RequestTimeoutError, ServerClosedError, ServerOverloadedError } from '../lib/serving/errors';

class FakeClock implements Clock {
  private time = 0;
  private nextId = 1;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();
  now(): number { return this.time; }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void { this.timers.delete(handle as number); }
  /** Moves time on by `ms`, firing the timers due on the way, in order. */
  advance(ms: number): void {
    const target = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= target).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].fn();
    }
    this.time = target;
  }
}

/** A runner that records each batch and lets the test finish it. */
function recorder() {
  const batches: Array<{ items: number[]; at: number; finish: () => void; batch: Array<Pending<number, number>> }> = [];
  const clock = new FakeClock();
  const run: BatchRunner<number, number> = (batch) => new Promise<void>((resolve) => {
    batches.push({
      items: batch.map((p) => p.item), at: clock.now(), batch,
      finish: () => { for (const p of batch) p.resolve(p.item * 10); resolve(); },
    });
  });
  return { batches, clock, run };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe('dynamic batcher', () => {
  it('starts a batch at once when the largest preferred size is queued', () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 4, maxQueueDelayMs: 10 }, clock);
    for (let i = 0; i < 5; i++) void batcher.submit(i);
    expect(batches.map((b) => b.items)).toEqual([[0, 1, 2, 3]]);
    expect(batches[0].at).toBe(0);
    expect(batcher.stats().queued).toBe(1);
  });

  it('waits maxQueueDelayMs for the oldest request, then sends what is queued', () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 8, maxQueueDelayMs: 10 }, clock);
    void batcher.submit(1);
    clock.advance(3);
    void batcher.submit(2);
    clock.advance(6.99);
    expect(batches).toHaveLength(0);
    clock.advance(0.01);
    expect(batches.map((b) => [b.items, b.at])).toEqual([[[1, 2], 10]]);
  });

  it('after the delay forms the largest preferred size the queue fills; the rest waits for a free instance', async () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 8, maxQueueDelayMs: 5, preferredBatchSizes: [2, 4] }, clock);
    for (let i = 0; i < 3; i++) void batcher.submit(i);
    clock.advance(5);
    expect(batches.map((b) => b.items)).toEqual([[0, 1]]);
    batches[0].finish();
    await flush();
    expect(batches.map((b) => b.items)).toEqual([[0, 1], [2]]);
  });

  it('with no delay, sends what is queued at once', () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 4, maxQueueDelayMs: 0, instances: 2 }, clock);
    for (let i = 0; i < 3; i++) void batcher.submit(i);
    expect(batches.map((b) => b.items)).toEqual([[0], [1]]);
    expect(batcher.stats().queued).toBe(1);
  });

  it('runs up to `instances` batches at once', async () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 2, maxQueueDelayMs: 1, instances: 2 }, clock);
    const answers = Array.from({ length: 6 }, (_, i) => batcher.submit(i));
    expect(batches.map((b) => b.items)).toEqual([[0, 1], [2, 3]]);
    expect(batcher.stats()).toMatchObject({ queued: 2, inFlight: 2 });
    batches[1].finish();
    await flush();
    expect(batches.map((b) => b.items)).toEqual([[0, 1], [2, 3], [4, 5]]);
    batches[0].finish();
    batches[2].finish();
    expect(await Promise.all(answers)).toEqual([0, 10, 20, 30, 40, 50]);
    expect(batcher.stats().batchSizes.get(2)).toBe(3);
  });

  it('refuses a request at once when maxQueueSize are queued', async () => {
    const { clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 2, maxQueueDelayMs: 100, maxQueueSize: 1, instances: 1 }, clock);
    void batcher.submit(1);
    await expect(batcher.submit(2)).rejects.toBeInstanceOf(ServerOverloadedError);
    await expect(batcher.submit(2)).rejects.toThrow(/overloaded: 1 requests are queued.*maxQueueSize 1/);
    expect(batcher.stats().rejected.overloaded).toBe(2);
  });

  it('refuses a request that waited timeoutMs without a batch taking it', async () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 1, maxQueueDelayMs: 0, timeoutMs: 50 }, clock);
    const first = batcher.submit(1);
    const second = batcher.submit(2);
    const settled = jest.fn();
    second.then(settled, settled);
    clock.advance(49);
    await flush();
    expect(settled).not.toHaveBeenCalled();
    clock.advance(1);
    await expect(second).rejects.toBeInstanceOf(RequestTimeoutError);
    batches[0].finish();
    expect(await first).toBe(10);
    await flush();
    expect(batches).toHaveLength(1); // the timed-out request never ran
  });

  it('close() finishes the batches in flight and refuses the queued and new requests', async () => {
    const { batches, clock, run } = recorder();
    const batcher = new DynamicBatcher(run, { maxBatchSize: 1, maxQueueDelayMs: 0 }, clock);
    const running = batcher.submit(1);
    const queued = batcher.submit(2);
    const closed = batcher.close();
    await expect(queued).rejects.toBeInstanceOf(ServerClosedError);
    await expect(batcher.submit(3)).rejects.toThrow(/closed: it takes no new requests/);
    const done = jest.fn();
    void closed.then(done);
    await flush();
    expect(done).not.toHaveBeenCalled();
    batches[0].finish();
    await closed;
    expect(await running).toBe(10);
    expect(batches).toHaveLength(1);
  });

  it('a request resolved before its batch ends is answered then (early release)', async () => {
    const clock = new FakeClock();
    let finish = () => undefined as void;
    const batcher = new DynamicBatcher<number, string>((batch) => {
      batch[1].resolve('early');
      return new Promise<void>((resolve) => { finish = () => { batch[0].resolve('late'); resolve(); }; });
    }, { maxBatchSize: 2, maxQueueDelayMs: 10 }, clock);
    const late = batcher.submit(0);
    const early = batcher.submit(1);
    expect(await early).toBe('early');
    const lateDone = jest.fn();
    void late.then(lateDone);
    await flush();
    expect(lateDone).not.toHaveBeenCalled();
    finish();
    expect(await late).toBe('late');
  });

  it('a batch that fails rejects its unanswered requests; one left unanswered is rejected', async () => {
    const clock = new FakeClock();
    const failing = new DynamicBatcher<number, number>(async (batch) => {
      batch[0].resolve(1);
      throw new Error('model error: shapes [2, 3] and [4]');
    }, { maxBatchSize: 2, maxQueueDelayMs: 10 }, clock);
    const [a, b] = [failing.submit(0), failing.submit(1)];
    expect(await a).toBe(1);
    await expect(b).rejects.toThrow(/model error: shapes/);
    const forgetful = new DynamicBatcher<number, number>(async () => undefined, { maxBatchSize: 1, maxQueueDelayMs: 0 }, clock);
    await expect(forgetful.submit(0)).rejects.toThrow(/batch ended without an answer/);
  });

  it('refuses settings that make no sense, naming them', () => {
    const run: BatchRunner<number, number> = async () => undefined;
    expect(() => new DynamicBatcher(run, { maxBatchSize: 0 })).toThrow(/maxBatchSize must be a positive integer/);
    expect(() => new DynamicBatcher(run, { maxBatchSize: 4, preferredBatchSizes: [8] })).toThrow(/preferred batch size 8 is larger than maxBatchSize 4/);
    expect(() => new DynamicBatcher(run, { maxQueueDelayMs: -1 })).toThrow(/maxQueueDelayMs/);
    expect(() => new DynamicBatcher(run, { timeoutMs: 0 })).toThrow(/timeoutMs/);
  });
});
