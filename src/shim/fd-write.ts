// Synchronous writes of the shim's one-shot commands (start, delete) to their
// stdout, which containerd may hand over non-blocking. A module of its own so
// that `start` does not load `delete`'s dependencies (the runtime) with it.
import { writeSync } from "node:fs";

/** Writes all of `data` to a (possibly non-blocking) fd synchronously. */
export function writeAll(fd: number, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) {
    try {
      off += writeSync(fd, data, off, data.length - off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EAGAIN") throw err;
    }
  }
}
