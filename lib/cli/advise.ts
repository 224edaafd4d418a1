/**
 * `torch-early-exit advise MODEL --data …`: where to put exits on a model a user has (see
 * early-exit/advise.ts): the table of candidates, the chosen exits as the demo's `--exit`
 * flags, `advice.json` and `advice.svg`.
 */
import * as path from 'path';
import { emailLabels, halveByGroup, loadSpamAssassin, splitEmails } from '../data/spam-assassin';
import { loadMnist, shapeDigits } from '../data/mnist';
import { Advice, AdviseCriterion, advise, adviceSummary } from '../early-exit/advise';
import { LabelledData } from '../early-exit/trainer';
import { WordTokenizer } from '../text/tokenizer';
import { load } from '../torch/jit';
import { load as loadExported } from '../torch/export';
import { Tensor } from '../torch/tensor';
import * as torch from '../torch/torch';
import { writeFileAtomic } from '../io/atomic-write';
import { UsageError, device, integer, parseCommand, readFlags } from './args';
import { batchBar, printAdvice } from './console';
import { adviceSvg } from './plot';
import { SPAM_TOKENIZER } from './demo-spam';
import * as fs from 'fs';

export const ADVISE_USAGE = `Usage: torch-early-exit advise MODEL --data mnist|spam-assassin [options]

Where to put exits on MODEL (TorchScript .pt or exported program .pt2), after Apparate
(SOSP'24). The candidates are the modules at most --depth names deep (ResNet's blocks
layer1.0..., MobileNetV2's features.0...) that the forward calls once and that give one
float tensor holding the batch; a module giving the same output as the one around it counts
once, under the shorter name. At every candidate a cheap ramp (average pooling to at most
4 x 4 cells and a linear layer; the first token and a linear layer for sequences) is trained
at once, the backbone frozen, on the training data. Each candidate is then timed at batch 1
as it would be served: compiled for inference, stopped there, passing it, and the network
without exits, paired round by round. On the held-out data, exits are added one at a time,
each time the one that lowers the expected latency per sample most, and removed where that
lowers it, thresholds tuned for every set under the same budget that serving uses: with
probability 1 - --delta, at most --max-drop points of accuracy lost on new data
(Learn-then-Test). Leaving at an exit costs the stop there and every earlier ramp; passing
them all costs the network and every ramp. The thresholds printed were tuned on the data
that chose the exits: calibrate them again on data that chose nothing before serving.

Options:
  --data mnist|spam-assassin  the digits of the mnist package, or the SpamAssassin e-mails
                         (their training part trains; half of the held-out part, halved within
                         the corpus's groups, chooses; the other half is left for reporting)
  --tokenizer FILE       --data spam-assassin: MODEL's tokenizer (default: the fixture's)
  --points A,B,...       the candidates instead (fully qualified module names)
  --depth N              how deep candidate names may be (default 2)
  --channels N           --data mnist: repeat the gray channel N times (3 for RGB models; default 1)
  --size N               --data mnist: pad the 28 x 28 digits with zeros to N x N (default 28)
  --train N --held-out N --data mnist: digits that train the ramps and that choose (default 8000, 1000)
  --epochs N             passes over the training data (default 2)
  --batch-size N         (default 64)
  --lr X                 Adam's learning rate for the ramps (default 0.001)
  --max-drop P           accuracy points one may lose (default 0.5)
  --delta D              the chance the guarantee fails (default 0.05)
  --criterion C          entropy, maxProbability, margin or auto (default auto: the cheapest)
  --max-exits N          the most exits to choose (default 4)
  --threads N            intra-op threads (default 1, as the demo serves)
  --device cpu|cuda      where to run (default cpu)
  --seed N               initialisation and shuffling (default 0)
  --out DIR              where to write advice.json and advice.svg (default out/advise)
  -h, --help             this text`;

export interface AdviseCliOptions {
  model: string;
  data: 'mnist' | 'spam-assassin';
  tokenizer?: string;
  points?: string[];
  depth: number;
  channels: number;
  size: number;
  train: number;
  heldOut: number;
  epochs: number;
  batchSize: number;
  lr: number;
  maxDrop: number;
  delta: number;
  criterion: 'auto' | AdviseCriterion;
  maxExits: number;
  threads: number;
  device: string;
  seed: number;
  out: string;
}

function share(flag: string, value: string, low: number, high: number): number {
  const number = Number(value);
  if (!(number > low && number < high)) throw new UsageError(`${flag} needs a number between ${low} and ${high}, got '${value}'`);
  return number;
}

export function parseAdviseArgs(argv: readonly string[]): AdviseCliOptions | null {
  const options: Partial<AdviseCliOptions> & Omit<AdviseCliOptions, 'model' | 'data'> = {
    depth: 2, channels: 1, size: 28, train: 8000, heldOut: 1000, epochs: 2, batchSize: 64, lr: 1e-3, maxDrop: 0.5, delta: 0.05,
    criterion: 'auto', maxExits: 4, threads: 1, device: 'cpu', seed: 0, out: 'out/advise',
  };
  const given = readFlags(argv, (flag, next) => {
    switch (flag) {
      case '--data': {
        const value = next();
        if (value !== 'mnist' && value !== 'spam-assassin') throw new UsageError(`--data must be mnist or spam-assassin, got '${value}'`);
        options.data = value;
        break;
      }
      case '--tokenizer': options.tokenizer = next(); break;
      case '--points': options.points = next().split(',').map((p) => p.trim()).filter(Boolean); break;
      case '--depth': options.depth = integer(flag, next(), 1); break;
      case '--channels': options.channels = integer(flag, next(), 1); break;
      case '--size': options.size = integer(flag, next(), 28); break;
      case '--train': options.train = integer(flag, next(), 1); break;
      case '--held-out': options.heldOut = integer(flag, next(), 1); break;
      case '--epochs': options.epochs = integer(flag, next(), 1); break;
      case '--batch-size': options.batchSize = integer(flag, next(), 1); break;
      case '--lr': options.lr = share(flag, next(), 0, Infinity); break;
      case '--max-drop': options.maxDrop = share(flag, next(), 0, 100); break;
      case '--delta': options.delta = share(flag, next(), 0, 1); break;
      case '--criterion': {
        const value = next();
        if (!['auto', 'entropy', 'maxProbability', 'margin'].includes(value)) {
          throw new UsageError(`--criterion must be entropy, maxProbability, margin or auto, got '${value}' (patience cannot be certified)`);
        }
        options.criterion = value as AdviseCliOptions['criterion'];
        break;
      }
      case '--max-exits': options.maxExits = integer(flag, next(), 1); break;
      case '--threads': options.threads = integer(flag, next(), 1); break;
      case '--device': options.device = device(next()); break;
      case '--seed': options.seed = integer(flag, next(), 0); break;
      case '--out': options.out = next(); break;
      default:
        if (flag.startsWith('-')) throw new UsageError(`unknown option '${flag}'`);
        if (options.model !== undefined) throw new UsageError(`one MODEL only, got '${options.model}' and '${flag}'`);
        options.model = flag;
    }
  });
  if (given === null) return null;
  if (options.model === undefined) throw new UsageError('MODEL is missing: a TorchScript (.pt) or exported (.pt2) model file');
  if (options.data === undefined) throw new UsageError('--data is missing: mnist or spam-assassin');
  if (options.data === 'spam-assassin') {
    for (const flag of ['--train', '--held-out', '--channels', '--size']) {
      if (given.has(flag)) throw new UsageError(`${flag} is for --data mnist: the e-mails come split by their digests`);
    }
  } else {
    if (options.tokenizer !== undefined) throw new UsageError('--tokenizer is for --data spam-assassin');
    if (options.train + options.heldOut > 10000) throw new UsageError('--train plus --held-out cannot exceed the 10000 digits of the mnist package');
  }
  return options as AdviseCliOptions;
}

function loadData(options: AdviseCliOptions): { train: LabelledData; select: LabelledData; what: string } {
  const on = (t: Tensor) => (options.device === 'cpu' ? t : t.to(options.device));
  if (options.data === 'mnist') {
    const { train, test } = loadMnist({ train: options.train, test: options.heldOut, seed: options.seed });
    const shape = (d: typeof train) => ({ images: on(shapeDigits(d.images, { channels: options.channels, size: options.size })), labels: on(d.labels) });
    return { train: shape(train), select: shape(test), what: `${options.train} training and ${options.heldOut} held-out digits of the mnist package` };
  }
  const tokenizer = WordTokenizer.load(options.tokenizer ?? SPAM_TOKENIZER);
  const { train, test } = splitEmails(loadSpamAssassin());
  const [choosing] = halveByGroup(test);
  const encode = (emails: typeof train) => ({ images: on(tokenizer.encodeBatch(emails.map((e) => e.text)).inputIds), labels: on(emailLabels(emails)) });
  return {
    train: encode(train), select: encode(choosing),
    what: `${train.length} training e-mails and ${choosing.length} held-out ones of the SpamAssassin corpus (the first of halveByGroup's halves)`,
  };
}

/** Runs `advise` from the command line; resolves to the exit code. */
export async function adviseCommand(argv: readonly string[], log: (line: string) => void = console.log): Promise<number> {
  const options = parseCommand('advise', ADVISE_USAGE, () => parseAdviseArgs(argv));
  if (typeof options === 'number') return options;
  torch.setNumThreads(options.threads);
  torch.manualSeed(options.seed);
  if (options.device !== 'cpu' && !torch.cuda.isAvailable()) throw new Error(`--device ${options.device}: no CUDA device is available`);
  const backbone = options.model.endsWith('.pt2') ? loadExported(options.model, { device: options.device }) : load(options.model, { device: options.device });
  const { train, select, what } = loadData(options);
  log(`torch-early-exit advise: LibTorch ${torch.version.libtorch}, ${options.threads} thread(s), ${options.device}, seed ${options.seed}`);
  log(`model: ${options.model}\ndata: ${what}`);
  const guarantee = { epsilon: options.maxDrop, delta: options.delta };
  // A bar starts at each epoch's first batch; each stage's line ends the one before.
  const bar = batchBar(options.epochs, []);
  let advice: Advice;
  try {
    advice = await advise(backbone, {
      train, select, points: options.points, depth: options.depth, epochs: options.epochs, batchSize: options.batchSize, lr: options.lr,
      seed: options.seed, guarantee, maxExits: options.maxExits,
      criteria: options.criterion === 'auto' ? undefined : [options.criterion],
      onStage: (stage) => {
        bar.stop();
        log(stage);
      },
      onBatch: bar.onBatch,
    });
  } finally {
    bar.stop();
  }
  printAdvice(advice, select.labels.shape[0], log);
  log(`to train and serve them: npx torch-early-exit demo --model ${options.model}${advice.exitSpecs.map(([p, s]) => ` --exit '${p}=${s}'`).join('')}`);
  fs.mkdirSync(options.out, { recursive: true });
  writeFileAtomic(path.join(options.out, 'advice.json'), JSON.stringify({
    model: options.model, libtorch: torch.version.libtorch, threads: options.threads, data: what, ...adviceSummary(advice),
  }, null, 2) + '\n', 'advise');
  writeFileAtomic(path.join(options.out, 'advice.svg'), adviceSvg(advice, `Where to put exits: ${path.basename(options.model)}`), 'advise');
  log(`wrote ${path.join(options.out, 'advice.json')} and ${path.join(options.out, 'advice.svg')}`);
  return 0;
}
