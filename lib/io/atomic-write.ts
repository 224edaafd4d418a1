/**
 * Writing a file so that a reader, a crash or a full disk never sees it half written:
 * the bytes go to a temporary file in the same folder, are flushed to the disk, and the
 * temporary file is renamed over the target.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

/** What a file that is not a regular file is, in words. */
export function describeFileKind(stats: fs.Stats): string {
  if (stats.isFile()) return 'a regular file';
  if (stats.isDirectory()) return 'a directory';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isFIFO()) return 'a named pipe (FIFO)';
  if (stats.isSocket()) return 'a socket';
  if (stats.isSymbolicLink()) return 'a symbolic link';
  return 'not a regular file';
}

/** The reason an fs call failed, with its errno code. */
function reasonOf(error: unknown): string {
  const failure = error as NodeJS.ErrnoException;
  if (failure && typeof failure.message === 'string') {
    return failure.code && !failure.message.includes(failure.code) ? `${failure.message} (${failure.code})` : failure.message;
  }
  return String(error);
}

/** Flushes the folder `folder` so that a rename in it survives a crash; errors are ignored (some file systems refuse). */
export function fsyncFolder(folder: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(folder, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Not every platform or file system lets a folder be opened or flushed.
  } finally {
    if (fd !== undefined) try { fs.closeSync(fd); } catch { /* already reported nothing */ }
  }
}

/** Flushes the file `file`, already written and closed by someone else, to the disk. */
export function fsyncFile(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes `bytes` to `target` atomically: into `.${basename}.${pid}.${random}.tmp` in the same
 * folder (created with flag 'wx', the old file's permissions kept), flushed with fsync,
 * renamed over `target`, then the folder flushed. A symbolic link to a regular file is
 * followed: the file it points to is replaced and the link kept.
 * Refuses a target that exists and is not a regular file (a directory, a device such as
 * /dev/full, a socket, a pipe). On any failure (ENOSPC, EACCES, a missing folder) it throws
 * `${what}: cannot write '${target}': <reason and errno code>`, removes the temporary file,
 * and leaves the previous file as it was.
 */
export function writeFileAtomic(target: string, bytes: Buffer | string, what: string): void {
  const fail = (reason: string, cause?: unknown): never => {
    throw new Error(`${what}: cannot write '${target}': ${reason}`, cause === undefined ? undefined : { cause });
  };
  let destination = target;
  let previous: fs.Stats | undefined;
  try {
    previous = fs.lstatSync(target);
    if (previous.isSymbolicLink()) {
      destination = fs.realpathSync(target);
      previous = fs.statSync(destination);
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') fail(reasonOf(error), error);
    if (previous?.isSymbolicLink()) fail(`it is a symbolic link to '${fs.readlinkSync(target)}', which does not exist`);
    previous = undefined;
  }
  if (previous && !previous.isFile()) fail(`it is ${describeFileKind(previous)}, not a regular file`);

  const folder = path.dirname(destination);
  if (!fs.existsSync(folder)) fail(`the folder '${folder}' does not exist (ENOENT)`);
  const data = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
  const temporary = path.join(folder, `.${path.basename(destination)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`);
  let fd: number | undefined;
  let created = false;
  try {
    fd = fs.openSync(temporary, 'wx', previous ? previous.mode & 0o7777 : 0o666);
    created = true;
    if (previous) fs.fchmodSync(fd, previous.mode & 0o7777);
    for (let written = 0; written < data.length;) written += fs.writeSync(fd, data, written, data.length - written);
    fs.fsyncSync(fd);
    const closing = fd;
    fd = undefined;
    fs.closeSync(closing);
    fs.renameSync(temporary, destination);
    created = false;
  } catch (error) {
    if (fd !== undefined) try { fs.closeSync(fd); } catch { /* the write error is the one to report */ }
    if (created) try { fs.unlinkSync(temporary); } catch { /* nothing more can be done */ }
    fail(reasonOf(error), error);
  }
  fsyncFolder(folder);
}
