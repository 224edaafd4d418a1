/**
 * Serving an early-exit model to many callers: requests are batched dynamically
 * (`batcher.ts`), each batch runs off the event loop with per-sample exits, and each sample
 * is answered the moment it leaves at its exit (early release), while the rest of its batch
 * goes on with fewer rows.
 *
 *   const server = new EarlyExitServer(model.eval().optimizeForInference(), {
 *     inputShape: [1, 28, 28], policy: { criterion: 'entropy', thresholds: [0.2] }, maxBatchSize: 32 });
 *   const { output, exit, queuedMs, computeMs } = await server.infer(pixels);
 *   await server.close();
 */
import * as os from 'os';
import { checkOptions, describeValue } from '../util/check';
import { LabelFreeCriterion } from '../early-exit/criteria';
import { EarlyExitModel } from '../early-exit/model';
import { quantiles } from '../util/quantile';
import { Tensor } from '../torch/tensor';
import { noGrad, noGradAsync, tensor, tidy } from '../torch/torch';
import { exitScores } from '../early-exit/criteria';
import { AdaptiveOptions, ThresholdTuner } from './adaptive';
import { BatcherOptions, Clock, DynamicBatcher, Pending, systemClock } from './batcher';
import { BadRequestError } from './errors';

/**
 * Token ids as the input (a text encoder's): each request one sequence of int64 ids, its own
 * length; a batch is padded to its longest with `padId`, which the model must mask (as a
 * model that makes its padding mask from the ids does).
 */
export interface SequenceInput {
  /** The most ids in one request (the model's position embeddings). */
  maxLength: number;
  /** The id a batch is padded with ([PAD], 0 for `WordTokenizer`). */
  padId: number;
  /** Ids must be below it (the rows of the model's token embedding): a bad id fails its own request, not its batch. */
  vocabularySize: number;
}

export interface ServerOptions extends BatcherOptions {
  /** The shape of one sample, without the batch dimension ([1, 28, 28] for an MNIST digit); or `sequence`. */
  inputShape?: number[];
  /** Instead of `inputShape`: token ids of any length up to `sequence.maxLength`. */
  sequence?: SequenceInput;
  /** When samples leave: the criterion and one threshold (or null) per exit, as `forwardEarlyExit`'s policy. */
  policy: { criterion: LabelFreeCriterion; thresholds: ReadonlyArray<number | null> };
  /**
   * Each sample leaves at the first exit where it meets the criterion (default true; the
   * exits must let samples leave alone: `exitsPerSample`, or `inferenceExitsPerSample` for a
   * model in inference mode); false: a batch leaves at an exit only when all of it does.
   */
  perSample?: boolean;
  /** Answer a sample the moment it leaves (default true); false: when its batch ends. */
  earlyRelease?: boolean;
  /**
   * Retune the thresholds online to hold an agreement with the final output (`adaptive.ts`):
   * a share of the requests also runs to the final output after its batch (its answer is
   * still the one released at its exit). `true` takes the defaults.
   */
  adaptive?: AdaptiveOptions | boolean;
}

/** The answer to one request. */
export interface InferResult {
  /** The output row (logits) of the exit the sample took, or of the final layer. */
  output: Float32Array;
  /** That exit's index; the number of exits for the final output. */
  exit: number;
  /** From `infer()` to its batch's start, and from there to the answer (ms). */
  queuedMs: number;
  computeMs: number;
}

/** What `stats()` reports. */
export interface ServerStats {
  requests: number;
  answered: number;
  failed: number;
  queued: number;
  inFlight: number;
  batches: number;
  meanBatchSize: number;
  rejected: { overloaded: number; timeout: number; closed: number };
  /** Share of the answered samples that took each exit (the last entry: the final output). */
  exitShares: number[];
  thresholds: Array<number | null>;
  /** With adaptive thresholds: the measured agreement with the final output (see ThresholdTuner.agreement). */
  agreement: { target: number; perExit: number[]; overall: number; monitored: number; retunes: number } | null;
  /** Latency from `infer()` to the answer over the last answers (ms). */
  latencyMs: { p50: number; p90: number; p99: number };
}

const LATENCY_WINDOW = 10000;

/** One queued sample: float values of `inputShape`, or a sequence's token ids. */
type Sample = Float32Array | BigInt64Array;

export class EarlyExitServer {
  /** The shape of one float sample; empty for a server of token sequences (`sequence`). */
  readonly inputShape: readonly number[];
  /** What a server of token sequences takes (undefined for float samples). */
  readonly sequence: Readonly<SequenceInput> | undefined;
  private readonly sampleSize: number;
  private readonly batcher: DynamicBatcher<Sample, InferResult>;
  private readonly policy: { criterion: LabelFreeCriterion; thresholds: Array<number | null>; perSample: boolean };
  private readonly earlyRelease: boolean;
  private readonly exitCounts: number[];
  private readonly latencies: number[] = [];
  private counts = { requests: 0, answered: 0, failed: 0 };
  private readonly tuner?: ThresholdTuner;

  constructor(private readonly model: EarlyExitModel, options: ServerOptions, private readonly clock: Clock = systemClock) {
    checkOptions(options, ['inputShape', 'sequence', 'policy', 'perSample', 'earlyRelease', 'adaptive', 'maxBatchSize', 'maxQueueDelayMs',
      'preferredBatchSizes', 'maxQueueSize', 'timeoutMs', 'instances'], 'EarlyExitServer: options');
    if ((options.inputShape === undefined) === (options.sequence === undefined)) {
      throw new TypeError('EarlyExitServer: give either inputShape (float samples of one shape) or sequence (token ids), not both or neither');
    }
    if (options.sequence !== undefined) {
      this.sequence = checkSequence(options.sequence);
      this.inputShape = [];
      this.sampleSize = 0;
    } else {
      if (!Array.isArray(options.inputShape) || options.inputShape.some((d) => !Number.isInteger(d) || d < 1)) {
        throw new TypeError(`EarlyExitServer: inputShape must be the shape of one sample, positive integers, got ${describeValue(options.inputShape)}`);
      }
      this.inputShape = [...options.inputShape];
      this.sampleSize = this.inputShape.reduce((a, b) => a * b, 1);
    }
    this.policy = { criterion: options.policy?.criterion, thresholds: [...(options.policy?.thresholds ?? [])], perSample: options.perSample ?? true };
    this.earlyRelease = options.earlyRelease ?? true;
    // A dry run on a blank sample (for sequences, two of lengths 2 and 1, so padding too): a
    // policy the model refuses, or an input it cannot take, fails here with the model's own
    // message, not at every request.
    const id = BigInt(Math.min(1, (this.sequence?.vocabularySize ?? 1) - 1));
    noGrad(() => tidy(() => {
      model.forwardEarlyExit(this.sequence ? this.batchOf([BigInt64Array.of(id, id), BigInt64Array.of(id)])
        : tensor(new Float32Array(this.sampleSize), { shape: [1, ...this.inputShape] }), this.policy);
    }));
    this.exitCounts = new Array(this.policy.thresholds.length + 1).fill(0);
    if (options.adaptive) {
      this.tuner = new ThresholdTuner(this.policy.criterion, this.policy.thresholds, options.adaptive === true ? {} : options.adaptive);
    }
    this.batcher = new DynamicBatcher((batch) => this.runBatch(batch), { instances: os.cpus().length, ...options }, clock);
  }

  /** The most requests the queue holds (`maxQueueSize`): a caller with more samples than this can never have them all queued. */
  get maxQueueSize(): number { return this.batcher.maxQueueSize; }

  /**
   * Queues one sample (a Tensor or Float32Array of `inputShape`, with or without a batch
   * dimension of 1; for `sequence`, token ids as a BigInt64Array, an array of integers or an
   * int64 Tensor [L] or [1, L]) and resolves with its answer. Rejects at once with BadRequestError for a
   * wrong shape, dtype, size or non-finite value, ServerOverloadedError when the queue is
   * full, ServerClosedError after `close()`.
   */
  infer(input: Tensor | Float32Array | BigInt64Array | readonly number[]): Promise<InferResult> {
    let data: Sample;
    try {
      data = this.sequence ? this.ids(input) : this.sample(input);
    } catch (error) {
      return Promise.reject(error);
    }
    this.counts.requests++;
    const answer = this.batcher.submit(data);
    answer.then((result) => {
      this.counts.answered++;
      this.exitCounts[result.exit]++;
      this.latencies.push(result.queuedMs + result.computeMs);
      if (this.latencies.length > LATENCY_WINDOW) this.latencies.splice(0, this.latencies.length - LATENCY_WINDOW);
    }, () => { this.counts.failed++; });
    return answer;
  }

  stats(): ServerStats {
    const batcher = this.batcher.stats();
    let samples = 0;
    for (const [size, count] of batcher.batchSizes) samples += size * count;
    const answered = Math.max(1, this.counts.answered);
    const [p50, p90, p99] = quantiles(this.latencies, [0.5, 0.9, 0.99]);
    return {
      ...this.counts, queued: batcher.queued, inFlight: batcher.inFlight, batches: batcher.batches,
      meanBatchSize: batcher.batches === 0 ? 0 : samples / batcher.batches, rejected: batcher.rejected,
      exitShares: this.exitCounts.map((count) => count / answered), thresholds: [...this.policy.thresholds],
      agreement: this.tuner ? { target: this.tuner.targetAgreement, ...this.tuner.agreement() } : null,
      latencyMs: { p50, p90, p99 },
    };
  }

  /** Refuses what is queued and new requests, and resolves once the batches in flight have answered. */
  close(): Promise<void> { return this.batcher.close(); }

  /** A sequence's token ids, checked against `sequence`. */
  private ids(input: Tensor | Float32Array | BigInt64Array | readonly number[]): BigInt64Array {
    const { maxLength, vocabularySize } = this.sequence!;
    let ids: BigInt64Array;
    if (input instanceof BigInt64Array) ids = BigInt64Array.from(input);
    else if (Array.isArray(input)) {
      const bad = input.findIndex((id) => !Number.isSafeInteger(id));
      if (bad >= 0) throw new BadRequestError(`token id ${bad} is ${describeValue(input[bad])}; ids are integers`);
      ids = BigInt64Array.from(input as readonly number[], BigInt);
    } else if (input instanceof Tensor) {
      if (input.dtype !== 'int64') throw new BadRequestError(`the input has dtype ${input.dtype}; token ids are int64`);
      if (!(input.shape.length === 1 || (input.shape.length === 2 && input.shape[0] === 1))) {
        throw new BadRequestError(`the input has shape [${input.shape}]; one sequence of ids is [L] or [1, L]`);
      }
      ids = BigInt64Array.from(input.data() as BigInt64Array);
    } else {
      throw new BadRequestError(`the input must be token ids (a BigInt64Array, an array of integers or an int64 Tensor), got ${describeValue(input)}`);
    }
    if (ids.length < 1 || ids.length > maxLength) throw new BadRequestError(`the input has ${ids.length} ids; this model takes 1 to ${maxLength}`);
    const bad = ids.findIndex((id) => id < 0n || id >= BigInt(vocabularySize));
    if (bad >= 0) throw new BadRequestError(`token id ${ids[bad]} at position ${bad} is outside the vocabulary (0 to ${vocabularySize - 1})`);
    return ids;
  }

  /** Sequences as one int64 batch, padded to the longest with `padId`. */
  private batchOf(sequences: BigInt64Array[]): Tensor {
    const longest = Math.max(...sequences.map((ids) => ids.length));
    const flat = new BigInt64Array(sequences.length * longest).fill(BigInt(this.sequence!.padId));
    sequences.forEach((ids, i) => flat.set(ids, i * longest));
    return tensor(flat, { shape: [sequences.length, longest] });
  }

  /** The sample's values, checked against `inputShape`. */
  private sample(input: Tensor | Float32Array | BigInt64Array | readonly number[]): Float32Array {
    const expected = `[${this.inputShape}] (or [1, ${this.inputShape}])`;
    if (input instanceof Float32Array) {
      if (input.length !== this.sampleSize) {
        throw new BadRequestError(`the input has ${input.length} values; one sample of ${expected} has ${this.sampleSize}`);
      }
      return this.finite(Float32Array.from(input));
    }
    if (!(input instanceof Tensor)) throw new BadRequestError(`the input must be a Tensor or a Float32Array, got ${describeValue(input)}`);
    const shape = input.shape[0] === 1 && input.shape.length === this.inputShape.length + 1 ? input.shape.slice(1) : input.shape;
    if (shape.join() !== this.inputShape.join()) throw new BadRequestError(`the input has shape [${input.shape}]; expected ${expected}`);
    if (input.dtype !== 'float32') throw new BadRequestError(`the input has dtype ${input.dtype}; expected float32`);
    return this.finite(Float32Array.from(input.data() as Float32Array));
  }

  private finite(data: Float32Array): Float32Array {
    const bad = data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new BadRequestError(`the input holds a non-finite value (${data[bad]}) at flat position ${bad}`);
    return data;
  }

  private async runBatch(batch: Array<Pending<Sample, InferResult>>): Promise<void> {
    let input: Tensor;
    if (this.sequence) {
      input = this.batchOf(batch.map((pending) => pending.item as BigInt64Array));
    } else {
      const flat = new Float32Array(batch.length * this.sampleSize);
      batch.forEach((pending, i) => flat.set(pending.item as Float32Array, i * this.sampleSize));
      input = tensor(flat, { shape: [batch.length, ...this.inputShape] });
    }
    const answer = (pending: Pending<Sample, InferResult>, output: Float32Array, exit: number) => {
      pending.resolve({ output, exit, queuedMs: pending.startedAt - pending.submittedAt, computeMs: this.clock.now() - pending.startedAt });
    };
    const rows = (values: Tensor): Float32Array[] => {
      const data = values.data() as Float32Array;
      const width = data.length / values.shape[0];
      return Array.from({ length: values.shape[0] }, (_, i) => data.slice(i * width, (i + 1) * width));
    };
    try {
      const onSampleExit = (exit: number, positions: number[], outputs: Tensor) => {
        const split = rows(outputs);
        outputs.dispose();
        positions.forEach((position, j) => answer(batch[position], split[j], exit));
      };
      const policy = { ...this.policy, thresholds: this.tuner ? this.tuner.thresholds : this.policy.thresholds };
      const monitored = this.tuner ? batch.flatMap((_, i) => (this.tuner!.monitor() ? [i] : [])) : [];
      const result = await this.model.forwardEarlyExitAsync(input, policy, this.earlyRelease && this.policy.perSample ? { onSampleExit } : {});
      const split = rows(result.output);
      result.output.dispose();
      batch.forEach((pending, i) => answer(pending, split[i], result.exits[i]));
      if (monitored.length > 0) await this.feedback(input, monitored);
    } finally {
      input.dispose();
    }
  }

  /** Runs the monitored samples to the final output, after their answers went out, and tells the tuner. */
  private async feedback(input: Tensor, monitored: number[]): Promise<void> {
    const tuner = this.tuner!;
    const chosen = tensor(BigInt64Array.from(monitored.map(BigInt)), { shape: [monitored.length] });
    const samples = input.indexSelect(0, chosen);
    chosen.dispose();
    const outputs = await noGradAsync(() => this.model.forwardAsync(samples));
    samples.dispose();
    const exits = outputs.slice(0, -1);
    const scores = exitScores(exits, tuner.criterion);
    const predictions = noGrad(() => tidy(() => outputs.map((o) => Array.from(o.argmax(1).data() as BigInt64Array, Number))));
    for (const output of outputs) output.dispose();
    const final = predictions[predictions.length - 1];
    monitored.forEach((_, j) => {
      if (tuner.observe(exits.map((__, i) => scores[i][j]), exits.map((__, i) => predictions[i][j]), final[j])) {
        this.policy.thresholds = tuner.thresholds;
      }
    });
  }
}

function checkSequence(sequence: SequenceInput): SequenceInput {
  checkOptions(sequence, ['maxLength', 'padId', 'vocabularySize'], 'EarlyExitServer: options.sequence');
  const { maxLength, padId, vocabularySize } = sequence;
  for (const [name, value, min] of [['maxLength', maxLength, 1], ['vocabularySize', vocabularySize, 1], ['padId', padId, 0]] as const) {
    if (!Number.isInteger(value) || value < min) throw new TypeError(`EarlyExitServer: sequence.${name} must be an integer >= ${min}, got ${describeValue(value)}`);
  }
  if (padId >= vocabularySize) throw new TypeError(`EarlyExitServer: sequence.padId ${padId} is outside the vocabulary (0 to ${vocabularySize - 1})`);
  return { maxLength, padId, vocabularySize };
}
