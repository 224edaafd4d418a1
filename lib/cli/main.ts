/** `torch-early-exit <command>`: the package's command line. */
import { DemoInterrupted, runDemo } from './demo';
import { runSpamDemo } from './demo-spam';
import { USAGE, parseCommand, parseDemoArgs } from './args';
import { adviseCommand } from './advise';
import { launch } from './launch';
import { serve } from './serve';

/** Runs a command; what it throws is printed under the command's name, exit code 1. */
async function reported(command: string, run: () => Promise<number>): Promise<number> {
  try {
    return await run();
  } catch (error) {
    console.error(`torch-early-exit ${command}: ${(error as Error).message}`);
    return 1;
  }
}

/** Runs the command line; resolves to the process exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help') {
    console.log(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === 'serve') return reported('serve', () => serve(rest));
  if (command === 'launch') return launch(rest);
  if (command === 'advise') return reported('advise', () => adviseCommand(rest));
  if (command !== 'demo') {
    console.error(`torch-early-exit: unknown command '${command}'\n\n${USAGE}`);
    return 2;
  }
  const options = parseCommand('demo', USAGE, () => parseDemoArgs(rest));
  if (typeof options === 'number') return options;
  const signal = { stopped: false };
  const onInterrupt = () => {
    if (signal.stopped) process.exit(130);
    signal.stopped = true;
    console.error('\ninterrupted: stopping (nothing is written); Ctrl-C again to quit at once');
  };
  process.on('SIGINT', onInterrupt);
  try {
    await (options.task === 'spam' ? runSpamDemo(options, signal) : runDemo(options, signal));
    return 0;
  } catch (error) {
    if (error instanceof DemoInterrupted) {
      console.error(`torch-early-exit demo: ${error.message}; no output written`);
      return 130;
    }
    console.error(`torch-early-exit demo: ${(error as Error).message}`);
    return 1;
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}
