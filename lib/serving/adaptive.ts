/**
 * Thresholds that adapt online, after Apparate (Dai et al., 2023): a share of the requests is
 * also run to the final output, and over a sliding window of those, each exit's threshold
 * is set to the loosest one at which the samples leaving there agree with the final output
 * at least `targetAgreement` of the time. Exits are tuned in order: a sample that the new
 * threshold of an earlier exit lets leave does not count at a later one.
 *
 * The agreement it reports is measured the honest way: each monitored sample is judged by
 * the thresholds in force when it arrived, before it could influence them.
 */
import { LabelFreeCriterion, exitsBelow, meets } from '../early-exit/criteria';

export interface AdaptiveOptions {
  /** The agreement with the final output to hold among the samples leaving at each exit (default 0.99). */
  targetAgreement?: number;
  /** Share of the requests also run to the final output (default 0.05). */
  sampleRate?: number;
  /** Monitored samples remembered (default 250: at 5% of 500 requests a second, the last 10 s). */
  window?: number;
  /** Retune after this many new monitored samples (default 10). */
  every?: number;
  /** Fewest monitored samples before the first retune, and fewest leaving at an exit to set its threshold (default 50). */
  minSamples?: number;
}

interface Observation {
  scores: number[];
  agrees: boolean[];
  /** The exit it would have taken with the thresholds of its time; `scores.length` for the final output. */
  servedExit: number;
}

export class ThresholdTuner {
  readonly targetAgreement: number;
  readonly sampleRate: number;
  readonly window: number;
  readonly every: number;
  readonly minSamples: number;
  private current: Array<number | null>;
  private readonly observations: Observation[] = [];
  private sinceRetune = 0;
  private retunes = 0;

  constructor(readonly criterion: LabelFreeCriterion, initial: ReadonlyArray<number | null>, options: AdaptiveOptions = {}) {
    if (criterion === 'patience') throw new Error("adaptive thresholds need a per-exit confidence: 'patience' counts agreeing exits instead");
    const share = (value: number | undefined, fallback: number, name: string) => {
      const result = value ?? fallback;
      if (!(result > 0 && result <= 1)) throw new RangeError(`adaptive.${name} must be in (0, 1], got ${value}`);
      return result;
    };
    const count = (value: number | undefined, fallback: number, name: string) => {
      const result = value ?? fallback;
      if (!Number.isInteger(result) || result < 1) throw new RangeError(`adaptive.${name} must be a positive integer, got ${value}`);
      return result;
    };
    this.targetAgreement = share(options.targetAgreement, 0.99, 'targetAgreement');
    this.sampleRate = share(options.sampleRate, 0.05, 'sampleRate');
    this.window = count(options.window, 250, 'window');
    this.every = count(options.every, 10, 'every');
    this.minSamples = count(options.minSamples, 50, 'minSamples');
    this.current = [...initial];
  }

  /** The thresholds in force now. */
  get thresholds(): Array<number | null> { return [...this.current]; }

  /** Whether to monitor the next request. */
  monitor(random: () => number = Math.random): boolean { return random() < this.sampleRate; }

  /** The exit a sample with `scores` takes with `thresholds`; the number of exits for the final output. */
  exitOf(scores: readonly number[], thresholds: ReadonlyArray<number | null> = this.current): number {
    const exit = scores.findIndex((score, i) => thresholds[i] !== null && meets(this.criterion, score, thresholds[i]!));
    return exit < 0 ? scores.length : exit;
  }

  /**
   * One monitored sample: its score and prediction at each exit, and the final prediction.
   * Returns true when the thresholds changed.
   */
  observe(scores: number[], predictions: number[], final: number): boolean {
    this.observations.push({ scores, agrees: predictions.map((p) => p === final), servedExit: this.exitOf(scores) });
    if (this.observations.length > this.window) this.observations.shift();
    this.sinceRetune++;
    if (this.observations.length < this.minSamples || this.sinceRetune < this.every) return false;
    this.sinceRetune = 0;
    this.retunes++;
    const next = this.retune();
    const changed = next.some((t, i) => t !== this.current[i]);
    this.current = next;
    return changed;
  }

  /**
   * Over the window: per exit, the share of the samples that left there (with the thresholds
   * of their time) whose prediction was the final one (NaN where none left), and the share of
   * all monitored samples whose answer was the final output's.
   */
  agreement(): { perExit: number[]; overall: number; monitored: number; retunes: number } {
    const exits = this.current.length;
    const perExit = Array.from({ length: exits }, (_, i) => {
      const left = this.observations.filter((o) => o.servedExit === i);
      return left.length === 0 ? NaN : left.filter((o) => o.agrees[i]).length / left.length;
    });
    const agreeing = this.observations.filter((o) => o.servedExit === exits || o.agrees[o.servedExit]).length;
    return { perExit, overall: this.observations.length === 0 ? NaN : agreeing / this.observations.length, monitored: this.observations.length, retunes: this.retunes };
  }

  private retune(): Array<number | null> {
    const next: Array<number | null> = [];
    let reaching = this.observations;
    for (let i = 0; i < this.current.length; i++) {
      // Most confident first; the loosest threshold whose leavers still agree often enough.
      const order = [...reaching].sort((a, b) => (exitsBelow(this.criterion) ? a.scores[i] - b.scores[i] : b.scores[i] - a.scores[i]));
      let agreeing = 0;
      let best = -1;
      order.forEach((o, k) => {
        if (o.agrees[i]) agreeing++;
        if (k + 1 >= this.minSamples && agreeing / (k + 1) >= this.targetAgreement) best = k;
      });
      const threshold = best < 0 ? null : order[best].scores[i];
      next.push(threshold);
      reaching = threshold === null ? reaching : reaching.filter((o) => !meets(this.criterion, o.scores[i], threshold));
    }
    return next;
  }
}
