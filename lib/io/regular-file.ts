/**
 * Reading a file that must be a regular file, so that what sits at its path cannot hang or
 * flood the reader: it is opened once without blocking (an ordinary open of a named pipe with
 * no writer waits for ever), checked on that descriptor to be a regular file (a link to
 * /dev/zero would be read until memory runs out), held to a size, and read in full through the
 * same descriptor, so nothing can be swapped in between the check and the read.
 */
import * as fs from 'fs';
import { describeFileKind } from './atomic-write';

/** Why opening failed, in words; the errno code stays on the error's `cause`. */
function openFailure(error: NodeJS.ErrnoException): string {
  switch (error.code) {
    case 'ENOENT': return 'no such file';
    case 'ELOOP': return 'it is a loop of symbolic links';
    case 'EACCES': return 'permission denied';
    default: return error.message;
  }
}

/**
 * The bytes of the regular file at `file`, at most `maxBytes` of them. Throws an Error whose
 * message says what is wrong ('no such file', 'it is a named pipe (FIFO), not a regular
 * file', ...) for the caller to prefix with what it was reading; the fs error, if any, is its
 * `cause`.
 */
export function readRegularFile(file: string, maxBytes = Number.MAX_SAFE_INTEGER): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (error) {
    throw new Error(openFailure(error as NodeJS.ErrnoException), { cause: error });
  }
  try {
    const stats = fs.fstatSync(fd);
    if (stats.isDirectory()) throw new Error('it is a directory');
    if (!stats.isFile()) throw new Error(`it is ${describeFileKind(stats)}, not a regular file`);
    if (stats.size > maxBytes) throw new Error(`it is ${stats.size} bytes, more than the ${maxBytes} such a file may hold`);
    const bytes = Buffer.allocUnsafe(stats.size);
    for (let done = 0; done < bytes.length;) {
      const read = fs.readSync(fd, bytes, done, bytes.length - done, done);
      if (read === 0) throw new Error(`it shrank from ${stats.size} to ${done} bytes while it was read`);
      done += read;
    }
    return bytes;
  } finally {
    fs.closeSync(fd);
  }
}

/** Whether `error` came from `readRegularFile` finding nothing at the path. */
export function isMissingFile(error: unknown): boolean {
  return ((error as Error)?.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
