'use strict';
/**
 * Run by `torch-early-exit launch` in test/launch.test.ts. Prints its launch environment as one
 * line of JSON, then acts on its arguments: `exit-rank R CODE` exits with CODE on rank R (after a
 * short wait, so that the other ranks are up), `hang` waits until a signal (20 s at most, then exits 99), printing
 * 'got SIGTERM' / 'got SIGINT' and exiting 0 (SIGTERM) or 130 (SIGINT); with neither it exits 0.
 * `kill-self` ends it with SIGTERM; `partial` ends its output with a line that has no newline.
 */
const names = ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'OMP_NUM_THREADS'];
const env = Object.fromEntries(names.map((name) => [name, process.env[name]]));
process.stdout.write(`${JSON.stringify({ env, argv: process.argv.slice(2) })}\n`);

const args = process.argv.slice(2);
const rank = Number(process.env.RANK);
let hang = args.includes('hang');
const at = args.indexOf('exit-rank');
if (at >= 0 && Number(args[at + 1]) === rank) {
  hang = false;
  setTimeout(() => process.exit(Number(args[at + 2])), 300);
} else if (hang) {
  const onSignal = (signal, code) => {
    process.stdout.write(`got ${signal}\n`, () => process.exit(code));
  };
  process.on('SIGTERM', () => onSignal('SIGTERM', 0));
  process.on('SIGINT', () => onSignal('SIGINT', 130));
  process.stdout.write('ready\n');
  setTimeout(() => process.exit(99), 20000); // never outlive a test that went wrong
}
if (args.includes('kill-self')) process.kill(process.pid, 'SIGTERM');
if (args.includes('partial')) process.stderr.write('no newline at the end');
