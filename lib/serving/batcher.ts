/**
 * A dynamic batcher with the vocabulary of NVIDIA Triton's: requests wait in a queue and
 * leave it in batches, so that a model serving many callers computes many samples per call.
 * Pure TypeScript over a clock it is given, so it is tested with a fake one; what runs a
 * batch is a function it is given too.
 *
 * When a batch starts: an instance is free (at most `instances` batches run at once, like
 * Triton's `instance_group { count }`), and either the queue holds the largest preferred
 * batch size (then that many go), or its oldest request has waited `maxQueueDelayMs` (then
 * the largest preferred size the queue fills goes, or everything up to `maxBatchSize` when
 * it fills none). The preferred sizes default to `[maxBatchSize]`.
 */
import { RequestTimeoutError, ServerClosedError, ServerOverloadedError } from './errors';

/** What the batcher needs of time; `systemClock` is the real one. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface BatcherOptions {
  /** The most requests in one batch (default 64). */
  maxBatchSize?: number;
  /** How long the oldest request may wait for others to join its batch (ms, default 2). */
  maxQueueDelayMs?: number;
  /** Batch sizes to form when the queue allows (default `[maxBatchSize]`). */
  preferredBatchSizes?: number[];
  /** The most requests queued; beyond it a request is refused at once (default 1024). */
  maxQueueSize?: number;
  /** How long a request may wait in the queue before it is refused (ms; default: no limit). */
  timeoutMs?: number;
  /** Batches in flight at once (default 1). */
  instances?: number;
}

/** One request as the function that runs a batch sees it. */
export interface Pending<T, R> {
  readonly item: T;
  /** When it was submitted and when its batch started (clock ms). */
  readonly submittedAt: number;
  startedAt: number;
  /** Settles the request; later calls do nothing. Safe to call before the batch ends (early release). */
  resolve(result: R): void;
  reject(error: Error): void;
  readonly settled: boolean;
}

/** Runs one batch; it settles each request (any it leaves unsettled is rejected when it returns). */
export type BatchRunner<T, R> = (batch: Array<Pending<T, R>>) => Promise<void>;

export interface BatcherStats {
  queued: number;
  inFlight: number;
  batches: number;
  /** How many batches had each size. */
  batchSizes: Map<number, number>;
  rejected: { overloaded: number; timeout: number; closed: number };
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
  return result;
}

class Request<T, R> implements Pending<T, R> {
  startedAt = NaN;
  settled = false;
  timer: unknown;

  constructor(readonly item: T, readonly submittedAt: number, private readonly done: (request: Request<T, R>) => void,
    private readonly onResolve: (result: R) => void, private readonly onReject: (error: Error) => void) {}

  resolve(result: R): void {
    if (this.settled) return;
    this.settled = true;
    this.done(this);
    this.onResolve(result);
  }

  reject(error: Error): void {
    if (this.settled) return;
    this.settled = true;
    this.done(this);
    this.onReject(error);
  }
}

export class DynamicBatcher<T, R> {
  readonly maxBatchSize: number;
  readonly maxQueueDelayMs: number;
  readonly preferredBatchSizes: readonly number[];
  readonly maxQueueSize: number;
  readonly timeoutMs: number | undefined;
  readonly instances: number;

  private readonly queue: Array<Request<T, R>> = [];
  private readonly running = new Set<Promise<void>>();
  private delayTimer: unknown = null;
  private closing = false;
  private readonly counts: BatcherStats = {
    queued: 0, inFlight: 0, batches: 0, batchSizes: new Map(), rejected: { overloaded: 0, timeout: 0, closed: 0 },
  };

  constructor(private readonly run: BatchRunner<T, R>, options: BatcherOptions = {}, private readonly clock: Clock = systemClock) {
    this.maxBatchSize = positiveInteger(options.maxBatchSize, 64, 'maxBatchSize');
    const delay = options.maxQueueDelayMs ?? 2;
    if (!(delay >= 0) || !Number.isFinite(delay)) throw new RangeError(`maxQueueDelayMs must be a finite number of ms, at least 0, got ${options.maxQueueDelayMs}`);
    this.maxQueueDelayMs = delay;
    const preferred = options.preferredBatchSizes ?? [this.maxBatchSize];
    if (preferred.length === 0) throw new RangeError('preferredBatchSizes must list at least one size (or be left out)');
    for (const size of preferred) {
      positiveInteger(size, 1, 'each of preferredBatchSizes');
      if (size > this.maxBatchSize) throw new RangeError(`preferred batch size ${size} is larger than maxBatchSize ${this.maxBatchSize}`);
    }
    this.preferredBatchSizes = [...new Set(preferred)].sort((a, b) => a - b);
    this.maxQueueSize = positiveInteger(options.maxQueueSize, 1024, 'maxQueueSize');
    if (options.timeoutMs !== undefined && !(options.timeoutMs > 0)) throw new RangeError(`timeoutMs must be a positive number of ms, got ${options.timeoutMs}`);
    this.timeoutMs = options.timeoutMs;
    this.instances = positiveInteger(options.instances, 1, 'instances');
  }

  /** Queues `item`; the promise settles when the batch that takes it answers for it. */
  submit(item: T): Promise<R> {
    if (this.closing) {
      this.counts.rejected.closed++;
      return Promise.reject(new ServerClosedError('it takes no new requests'));
    }
    if (this.queue.length >= this.maxQueueSize) {
      this.counts.rejected.overloaded++;
      return Promise.reject(new ServerOverloadedError(this.queue.length, this.maxQueueSize));
    }
    return new Promise<R>((resolve, reject) => {
      const request = new Request<T, R>(item, this.clock.now(), (r) => this.leaveQueue(r), resolve, reject);
      if (this.timeoutMs !== undefined) {
        request.timer = this.clock.setTimeout(() => {
          this.counts.rejected.timeout++;
          request.reject(new RequestTimeoutError(this.timeoutMs!));
        }, this.timeoutMs);
      }
      this.queue.push(request);
      this.pump();
    });
  }

  /** Requests waiting, batches running, and what has happened so far. */
  stats(): BatcherStats {
    return { ...this.counts, queued: this.queue.length, inFlight: this.running.size, batchSizes: new Map(this.counts.batchSizes),
      rejected: { ...this.counts.rejected } };
  }

  /**
   * Stops taking requests: those still queued are refused (ServerClosedError), the batches
   * in flight finish; resolves when they have.
   */
  async close(): Promise<void> {
    this.closing = true;
    this.clearDelayTimer();
    for (const request of [...this.queue]) {
      this.counts.rejected.closed++;
      request.reject(new ServerClosedError('the request was still queued when close() was called'));
    }
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
  }

  private leaveQueue(request: Request<T, R>): void {
    if (request.timer !== undefined) this.clock.clearTimeout(request.timer);
    request.timer = undefined;
    const index = this.queue.indexOf(request);
    if (index >= 0) this.queue.splice(index, 1);
  }

  /** Starts every batch that may start now, and sets the timer for the next one that may. */
  private pump(): void {
    while (!this.closing && this.running.size < this.instances && this.queue.length > 0) {
      const size = this.batchSizeNow();
      if (size === 0) break;
      this.start(this.queue.slice(0, size));
    }
    this.clearDelayTimer();
    if (!this.closing && this.queue.length > 0 && this.running.size < this.instances) {
      const wait = Math.max(0, this.queue[0].submittedAt + this.maxQueueDelayMs - this.clock.now());
      this.delayTimer = this.clock.setTimeout(() => { this.delayTimer = null; this.pump(); }, wait);
    }
  }

  /** How many requests a batch started now takes; 0: wait. */
  private batchSizeNow(): number {
    const queued = this.queue.length;
    const largestPreferred = this.preferredBatchSizes[this.preferredBatchSizes.length - 1];
    if (queued >= largestPreferred) return largestPreferred;
    if (this.clock.now() - this.queue[0].submittedAt < this.maxQueueDelayMs) return 0;
    const fits = this.preferredBatchSizes.filter((size) => size <= queued);
    return fits.length > 0 ? fits[fits.length - 1] : Math.min(queued, this.maxBatchSize);
  }

  private start(batch: Array<Request<T, R>>): void {
    const now = this.clock.now();
    for (const request of batch) {
      this.leaveQueue(request);
      request.startedAt = now;
    }
    this.counts.batches++;
    this.counts.batchSizes.set(batch.length, (this.counts.batchSizes.get(batch.length) ?? 0) + 1);
    const running: Promise<void> = (async () => {
      try {
        await this.run(batch);
        for (const request of batch) request.reject(new Error('the batch ended without an answer for this request'));
      } catch (error) {
        const failure = error instanceof Error ? error : new Error(String(error));
        for (const request of batch) request.reject(failure);
      }
    })().finally(() => {
      this.running.delete(running);
      this.pump();
    });
    this.running.add(running);
  }

  private clearDelayTimer(): void {
    if (this.delayTimer !== null) this.clock.clearTimeout(this.delayTimer);
    this.delayTimer = null;
  }
}
