import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor, WordTokenizer, halveByGroup, jit, loadCheckpoint, loadSpamAssassin, splitEmails, torch } from '../lib';
import { CAN_EXPORT, fixture, startServe } from './helpers';

const CLI = path.join(__dirname, '..', 'bin', 'torch-early-exit.js');

function run(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 170000 });
}

describe('npm run demo', () => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-demo-test-')), 'demo');

  it('trains, reports, calibrates, serves and writes its JSON and picture, with a small budget', () => {
    const result = run(['demo', '--epochs', '1', '--train', '1500', '--test', '300', '--out', out, '--seed', '3']);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain("Distiller's statistics");
    expect(result.stdout).toMatch(/speedup against the full network: \d+\.\d\dx/);
    const results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    expect(results.seed).toBe(3);
    expect(results.exitPoints).toEqual(['features1']);
    expect(results.distiller.report.samples).toBe(300);
    expect(results.distiller.report.exitTaken.reduce((a: number, b: number) => a + b, 0)).toBe(300);
    const served = results.serving.exits as Array<{ samples: number }>;
    // Half the held-out digits calibrate, the other half are served and reported.
    expect(results.heldOutSplit).toEqual({ calibration: 150, report: 150 });
    expect(served.reduce((a, e) => a + e.samples, 0)).toBe(150);
    expect(results.baselineLatencyMs).toBeGreaterThan(0);
    expect(results.serving.fullAccuracy).toBeGreaterThan(50);
    // Thresholds certified by Learn-then-Test at --max-drop with δ 0.05, or every exit off, said.
    const certificate = results.calibration.guarantee;
    expect(certificate).toMatchObject({ epsilon: 0.5, delta: 0.05, samples: 150 });
    if (certificate.certified && !results.calibration.keepsFullNetwork) {
      expect(certificate.bound).toBeLessThanOrEqual(0.5);
      expect(results.calibration.curve.length).toBeGreaterThan(1);
    } else {
      expect(results.calibration.chosen.thresholds).toEqual([null]);
    }
    expect(result.stdout).toMatch(/guarantee: at most ε = 0\.5 points lost with probability 1 − δ = 0\.95 \(Learn-then-Test on 150 samples\); certified bound \d+\.\d\d points/);
    // advise beside the fixed exit: every candidate of the bundled CNN, timed, and its choice.
    const advice = results.advice;
    expect(advice.candidates.map((c: { point: string }) => c.point)).toEqual([
      'features1.0', 'features1.1', 'features1.2', 'features1', 'features2.0', 'features2.1', 'features2.2', 'features2.3', 'features2.4',
      'features2.5', 'features2', 'classifier.0', 'classifier.1', 'classifier.2']);
    for (const point of advice.chosen) expect(advice.candidates.some((c: { point: string }) => c.point === point)).toBe(true);
    expect(advice.calibration.guarantee).toMatchObject({ epsilon: 0.5, delta: 0.05, samples: 150 });
    expect(result.stdout).toMatch(/point\s+output\s+prefix\s+ramp\s+ramp accuracy\s+leaving\s+saving/);
    expect(result.stdout).toMatch(/the demo's exit features1 \(trained with the network\) saves -?\d+\.\d\d% \(expected \d+\.\d{3} ms per digit/);
    expect(results.exitLatenciesMs).toHaveLength(2);
    // oneDNN chains on oneDNN 3 (LibTorch 2.6 and later); optimize_for_inference on 1.13 (oneDNN 2.6).
    expect(results.inferenceOptimization).toBe(results.libtorch.startsWith('1.13') ? 'oneDNN' : 'oneDNN chains');
    const svg = fs.readFileSync(path.join(out, 'tradeoff.svg'), 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('id="chosen"');
    expect(svg.trim().endsWith('</svg>')).toBe(true);

    // Same seed, same numbers (latencies aside).
    const again = run(['demo', '--epochs', '1', '--train', '1500', '--test', '300', '--out', out, '--seed', '3']);
    expect(again.status).toBe(0);
    const second = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    expect(second.heldOutAccuracy).toEqual(results.heldOutAccuracy);
    expect(second.distiller).toEqual(results.distiller);
  });

  it('--task spam: off-ramps on the text encoder, Distiller\'s statistics, thresholds certified on one half of the held-out e-mails, the other half served, its checkpoint served over HTTP', async () => {
    const spamOut = path.join(path.dirname(out), 'spam');
    const result = run(['demo', '--task', 'spam', '--epochs', '1', '--out', spamOut]);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain("Distiller's statistics");
    expect(result.stdout).toMatch(/one at a time, each at its own length/);
    const results = JSON.parse(fs.readFileSync(path.join(spamOut, 'results.json'), 'utf8'));
    expect(results.model).toMatch(CAN_EXPORT ? /text_encoder_exported\.pt2$/ : /text_encoder_scripted\.pt$/);
    expect(results.exitPoints).toEqual(['encoder.layers.0', 'encoder.layers.1', 'encoder.layers.2']);
    // The held-out fifth: every e-mail in Distiller's statistics, halved for calibration and report.
    const { test } = splitEmails(loadSpamAssassin());
    const [calibration, report] = halveByGroup(test);
    expect(results.distiller.report.samples).toBe(test.length);
    expect(results.heldOutSplit).toEqual({ calibration: calibration.length, report: report.length });
    expect((results.serving.exits as Array<{ samples: number }>).reduce((a, e) => a + e.samples, 0)).toBe(report.length);
    // The network without exits, served one e-mail at a time, answers as the encoder does on the padded batch.
    const encoder = jit.load(results.model.endsWith('.pt2') ? fixture('text_encoder_scripted.pt') : results.model).eval();
    const tokenizer = WordTokenizer.load(fixture('spam_tokenizer.json'));
    const predictions = torch.noGrad(() => (encoder.forward(tokenizer.encodeBatch(report.map((e) => e.text)).inputIds) as Tensor).argmax(1));
    const right = Array.from(predictions.data() as BigInt64Array, Number).filter((p, i) => p === report[i].label).length;
    expect(results.serving.fullAccuracy).toBeCloseTo((100 * right) / report.length, 9);
    // Certified (or every exit off, and said): at most half a point, one threshold at every exit.
    const certificate = results.calibration.guarantee;
    expect(certificate).toMatchObject({ epsilon: 0.5, delta: 0.05, samples: calibration.length });
    if (certificate.certified && !results.calibration.keepsFullNetwork) {
      expect(certificate.bound).toBeLessThanOrEqual(0.5);
      expect(new Set(results.calibration.chosen.thresholds).size).toBe(1);
    } else {
      expect(results.calibration.chosen.thresholds).toEqual([null, null, null]);
    }
    expect(fs.readFileSync(path.join(spamOut, 'tradeoff.svg'), 'utf8')).toContain('id="chosen"');

    // Its checkpoint serves token ids over HTTP, per sample and compiled, exported program or
    // TorchScript: the compiled graph carries the padding mask past the exits.
    const checkpoint = path.join(spamOut, 'checkpoint');
    const { url, log, stop } = await startServe([checkpoint, '--port', '0', '--instances', '1']);
    try {
      expect(log).not.toContain('served uncompiled');
      expect(log.includes('the backbone is an exported program (torch.export), served compiled for inference')).toBe(CAN_EXPORT);
      expect(log).toContain('input token ids (1 to 64)');
      const loaded = loadCheckpoint(checkpoint).model.eval();
      // One e-mail at a time, per sample and whole batch are the same.
      const policy = { thresholds: results.calibration.chosen.thresholds, criterion: results.calibration.criterion };
      for (const email of report.slice(0, 4)) {
        const ids = tokenizer.encode(email.text);
        const reply = await fetch(`${url}/predict`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ input: ids }) });
        expect(reply.status).toBe(200);
        const answer = (await reply.json()) as { prediction: number; exit: number };
        const alone = loaded.forwardEarlyExit(torch.tensor(BigInt64Array.from(ids, BigInt), { shape: [1, ids.length] }), policy);
        expect(answer.exit).toBe(alone.exit);
        expect(answer.prediction).toBe((alone.output.argmax(1).data() as BigInt64Array)[0] === 1n ? 1 : 0);
      }
    } finally {
      await stop();
    }

    const refused = run(['demo', '--task', 'spam', '--train', '100']);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toContain('--train is for the digits: --task spam holds out a fifth of the e-mails by their digests and halves it');
  });

  it('takes a user model with an exit spec', () => {
    const model = path.join(__dirname, 'fixtures', 'mnist_cnn.pt');
    const result = run(['demo', '--model', model, '--exit', 'features1=AdaptiveAvgPool2d(4),Flatten(),Linear(256,10)',
      '--exit', 'features2=Flatten(),Linear(3136,10)', '--epochs', '1', '--train', '600', '--test', '200', '--out', out,
      '--optimizer', 'adam', '--lr', '0.002', '--criterion', 'margin', '--calibration-split', '0.4']);
    expect(result.status).toBe(0);
    const results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    expect(results.exitPoints).toEqual(['features1', 'features2']);
    expect(results.lossWeights).toEqual([0.15, 0.15]);
    expect(results.calibration.criterion).toBe('margin');
    expect(results.heldOutSplit).toEqual({ calibration: 80, report: 120 });
  });

  (CAN_EXPORT ? it : it.skip)('takes an exported program (.pt2), and its checkpoint loads and exits', () => {
    const model = path.join(__dirname, 'fixtures', 'mnist_cnn_exported.pt2');
    const result = run(['demo', '--model', model, '--exit', 'features1=AdaptiveAvgPool2d(4),Flatten(),Linear(256,10)',
      '--epochs', '1', '--train', '600', '--test', '200', '--out', out]);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/compiled for inference: (oneDNN chains|oneDNN|frozen), from the exported program/);
    expect(result.stdout).toMatch(/speedup against the full network: \d+\.\d\dx/);
    const results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    expect(results.exitPoints).toEqual(['features1']);
    expect(results.serving.fullAccuracy).toBeGreaterThan(50);
    const checkpoint = path.join(out, 'checkpoint');
    expect(fs.readdirSync(checkpoint).sort()).toEqual(['backbone-state.pt', 'backbone.pt2', 'checkpoint.json', 'exit-0.pt']);
    const { loadCheckpoint, torch } = require('../lib') as typeof import('../lib');
    const loaded = loadCheckpoint(checkpoint).model.eval();
    expect(loaded.backbone.isExportedProgram).toBe(true);
    const digits = torch.zeros([2, 1, 28, 28]);
    const stopped = loaded.forwardEarlyExit(digits, { criterion: 'maxProbability', thresholds: [0] });
    expect(stopped.exit).toBe(0);
  });

  it.each([
    [['demo', '--epochs', 'two'], "--epochs needs an integer >= 0, got 'two'"],
    [['demo', '--bogus'], "unknown option '--bogus'"],
    [['demo', '--model', 'x.pt'], '--model needs at least one --exit NAME=SPEC'],
    [['demo', '--exit', 'features1'], "--exit needs NAME=SPEC, got 'features1'"],
    [['demo', '--device', 'tpu'], "--device must be cpu, cuda or cuda:N, got 'tpu'"],
    [['demo', '--train', '9000'], '--train plus --test cannot exceed the 10000 digits'],
    [['train'], "unknown command 'train'"],
    [['demo', '--optimizer', 'rmsprop'], "--optimizer must be sgd or adam, got 'rmsprop'"],
    [['demo', '--criterion', 'loss'], '--criterion must be one of auto, entropy, maxProbability, margin'],
    [['demo', '--criterion', 'patience'], "--criterion patience: the demo certifies its thresholds (Learn-then-Test), and patience's cannot be ordered"],
    [['demo', '--calibration-split', '1'], '--calibration-split needs a share strictly between 0 and 1'],
    [['demo', '--lr', '-1'], '--lr needs a positive number'],
  ])('wrong options %j get a clear message and exit code 2', (args, message) => {
    const result = run(args as string[]);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain(message);
    expect(result.stderr).toContain('Usage: torch-early-exit demo');
  });

  it('a bad exit spec or module name fails with the reason', () => {
    const result = run(['demo', '--exit', 'features9=Linear(784,10)', '--epochs', '0', '--out', out]);
    expect(result.status).toBe(1);
    expect(result.stderr).toContain("no module named 'features9' in this model; closest names: features1, features2");
    const spec = run(['demo', '--exit', 'features1=Lineal(784,10)', '--epochs', '0', '--out', out]);
    expect(spec.stderr).toContain("unknown layer 'Lineal'");
    // A branch that does not fit its exit fails before any data is loaded, naming the exit and the shapes.
    const shapes = run(['demo', '--exit', 'features1=Flatten(),Linear(784,10)', '--epochs', '0', '--out', out]);
    expect(shapes.status).toBe(1);
    expect(shapes.stdout).not.toContain('data:');
    expect(shapes.stderr).toContain('the exits do not fit the model on MNIST digits of shape [1, 1, 28, 28]: ' +
      "the exit at 'features1' gives [1, 16, 14, 14]; layer 1 of its branch, Linear(");
    expect(shapes.stderr).toMatch(/cannot take its input of shape \[1, 3136\]: .*784/);
    const classes = run(['demo', '--exit', 'features1=Flatten(),Linear(3136,5)', '--epochs', '0', '--out', out]);
    expect(classes.stderr).toContain("the exit at 'features1' gives [1, 5] for one digit but the model's output is [1, 10]");
  });

  it('Ctrl-C leaves no half-written output', async () => {
    const target = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tee-demo-int-')), 'never');
    const child = spawn(process.execPath, [CLI, 'demo', '--epochs', '20', '--out', target], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let sent = false;
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      if (!sent && stdout.includes('epoch 1/20')) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(130);
    expect(fs.existsSync(target)).toBe(false);
    expect(fs.readdirSync(path.dirname(target))).toEqual([]);
  });
});
