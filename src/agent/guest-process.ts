// A process the agent runs in the guest (crun run / crun exec), with its
// stdio either on pipes or on a pseudo-terminal (node-pty).
import { spawn } from "node:child_process";
import { constants as osConstants } from "node:os";
import type { Writable } from "node:stream";
import * as pty from "node-pty";
import { OutputBuffer } from "./output-buffer.js";

export interface ExitInfo {
  /** Exit code, or 128 + signal number. */
  status: number;
}

export interface SpawnOptions {
  terminal: boolean;
  env?: NodeJS.ProcessEnv;
  cols?: number;
  rows?: number;
}

export function signalNumber(sig: NodeJS.Signals | string | null | undefined): number {
  if (!sig) return 0;
  const n = (osConstants.signals as Record<string, number>)[sig];
  return n ?? 0;
}

export class GuestProcess {
  readonly stdout = new OutputBuffer();
  readonly stderr = new OutputBuffer();
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | undefined;
  /** Host-facing pid of the spawned helper (crun). */
  readonly helperPid: number;
  private term: pty.IPty | undefined;
  private stdin: Writable | undefined;
  private readonly terminal: boolean;

  constructor(file: string, args: string[], opts: SpawnOptions) {
    this.terminal = opts.terminal;
    let resolveExit!: (e: ExitInfo) => void;
    this.exited = new Promise((r) => (resolveExit = r));
    const finish = (status: number): void => {
      if (this.exitInfo) return;
      this.exitInfo = { status };
      resolveExit(this.exitInfo);
    };
    if (opts.terminal) {
      const t = pty.spawn(file, args, {
        name: "xterm",
        cols: opts.cols && opts.cols > 0 ? opts.cols : 80,
        rows: opts.rows && opts.rows > 0 ? opts.rows : 24,
        env: (opts.env ?? process.env) as Record<string, string>,
        encoding: null,
      } as pty.IPtyForkOptions);
      this.term = t;
      this.helperPid = t.pid;
      this.stdout.attach({ pause: () => t.pause(), resume: () => t.resume() });
      t.onData((d: string | Buffer) => this.stdout.push(typeof d === "string" ? Buffer.from(d) : d));
      this.stderr.end();
      t.onExit(({ exitCode, signal }) => {
        // node-pty reports the end of output together with the exit.
        setTimeout(() => this.stdout.end(), 50);
        finish(signal ? 128 + signal : exitCode);
      });
    } else {
      const child = spawn(file, args, { stdio: ["pipe", "pipe", "pipe"], env: opts.env ?? process.env });
      this.helperPid = child.pid ?? -1;
      this.stdin = child.stdin ?? undefined;
      child.stdin?.on("error", () => undefined);
      const out = child.stdout!;
      const err = child.stderr!;
      this.stdout.attach(out);
      this.stderr.attach(err);
      out.on("data", (d: Buffer) => this.stdout.push(d));
      err.on("data", (d: Buffer) => this.stderr.push(d));
      out.on("close", () => this.stdout.end());
      err.on("close", () => this.stderr.end());
      child.on("error", (e) => {
        this.stderr.push(Buffer.from(`hako-agent: cannot start ${file}: ${e.message}\n`));
        this.stdout.end();
        this.stderr.end();
        finish(127);
      });
      child.on("exit", (code, sig) => finish(code ?? 128 + signalNumber(sig)));
    }
  }

  async write(data: Buffer): Promise<number> {
    if (this.term) {
      this.term.write(data);
      return data.length;
    }
    const s = this.stdin;
    if (!s || s.destroyed || s.writableEnded) return 0;
    await new Promise<void>((resolve) => {
      if (s.write(data)) resolve();
      else s.once("drain", () => resolve());
      s.once("error", () => resolve());
    });
    return data.length;
  }

  closeStdin(): void {
    if (this.term) {
      // EOF on a terminal is the VEOF character at the start of a line.
      this.term.write("\x04");
      return;
    }
    this.stdin?.end();
  }

  resize(cols: number, rows: number): void {
    if (this.term && cols > 0 && rows > 0) this.term.resize(cols, rows);
  }

  get isTerminal(): boolean {
    return this.terminal;
  }
}
