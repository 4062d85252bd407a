// The host ends of a task's stdio as containerd hands them to the shim:
// fifo paths (opened without ever blocking the event loop), file:// URIs, or
// "" for absent. Opening a fifo O_RDWR never blocks on Linux (the shim is then
// also a reader, as runc's extra O_RDONLY open is); stdin is opened
// O_RDONLY|O_NONBLOCK. I/O goes through net.Socket on the fd (libuv pipe).
import { constants, mkdirSync, openSync, statSync } from "node:fs";
import { Socket } from "node:net";
import { dirname } from "node:path";
import { Code } from "../protocols/ttrpc/status.js";
import { RuntimeError } from "../runtime/errors.js";

export interface ProcessIO {
  stdin?: Socket;
  stdout?: Socket;
  stderr?: Socket;
  close(): void;
}

function isFifo(path: string): boolean {
  try {
    return statSync(path).isFIFO();
  } catch {
    return false;
  }
}

function openOutput(id: string, uri: string): Socket | undefined {
  if (uri === "") return undefined;
  let path = uri;
  if (uri.startsWith("file://")) {
    path = decodeURIComponent(new URL(uri).pathname);
    mkdirSync(dirname(path), { recursive: true });
    const fd = openSync(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o640);
    return new Socket({ fd, readable: false, writable: true });
  }
  if (uri.includes("://") && !uri.startsWith("fifo://"))
    throw new RuntimeError(Code.INVALID_ARGUMENT, id, `unsupported stdio URI ${uri}`, { hint: "hako supports fifos and file:// URIs" });
  path = uri.replace(/^fifo:\/\//, "");
  if (!isFifo(path)) throw new RuntimeError(Code.INVALID_ARGUMENT, id, `stdio path ${path} is not a fifo`);
  const fd = openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
  const s = new Socket({ fd, readable: false, writable: true });
  s.on("error", () => undefined);
  return s;
}

function openInput(id: string, path: string): Socket | undefined {
  if (path === "") return undefined;
  if (!isFifo(path)) throw new RuntimeError(Code.INVALID_ARGUMENT, id, `stdin path ${path} is not a fifo`);
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const s = new Socket({ fd, readable: true, writable: false });
  s.on("error", () => undefined);
  s.pause();
  return s;
}

export function openProcessIO(id: string, paths: { stdin: string; stdout: string; stderr: string; terminal: boolean }): ProcessIO {
  const opened: Socket[] = [];
  try {
    const stdin = openInput(id, paths.stdin);
    if (stdin) opened.push(stdin);
    const stdout = openOutput(id, paths.stdout);
    if (stdout) opened.push(stdout);
    // With a terminal, stderr is merged into the pty: CRI passes a path it never reads.
    const stderr = paths.terminal ? undefined : openOutput(id, paths.stderr);
    if (stderr) opened.push(stderr);
    return {
      stdin,
      stdout,
      stderr,
      close: () => {
        for (const s of opened) s.destroy();
      },
    };
  } catch (err) {
    for (const s of opened) s.destroy();
    if (err instanceof RuntimeError) throw err;
    throw new RuntimeError(Code.INVALID_ARGUMENT, id, `cannot open stdio of ${id}: ${(err as Error).message}`);
  }
}

/** Ends output sockets once everything written has been flushed. */
export function endOutputs(io: ProcessIO): Promise<void> {
  const ends = [io.stdout, io.stderr].filter((s): s is Socket => !!s && !s.destroyed).map(
    (s) =>
      new Promise<void>((resolve) => {
        s.end(() => resolve());
        setTimeout(resolve, 2000).unref();
      }),
  );
  return Promise.all(ends).then(() => io.close());
}

