// Small helpers to run host tools from the image builder.
import { spawn } from 'node:child_process';

export interface RunOptions {
  cwd?: string;
  input?: Buffer | string;
  env?: NodeJS.ProcessEnv;
  /** Called with each complete line of stdout+stderr (for progress parsing). */
  onLine?: (line: string) => void;
  /** Keep at most this many bytes of stdout (default: unlimited). */
  maxStdout?: number;
}

export interface RunResult {
  code: number;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a command and resolves with its output; never rejects on a non-zero exit. */
export function runRaw(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let outLen = 0;
    let err = '';
    let pending = '';
    const feed = (chunk: Buffer): void => {
      if (!opts.onLine) return;
      pending += chunk.toString('utf8');
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        opts.onLine(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    };
    child.stdout.on('data', (c: Buffer) => {
      if (opts.maxStdout === undefined || outLen < opts.maxStdout) {
        out.push(c);
        outLen += c.length;
      }
      feed(c);
    });
    child.stderr.on('data', (c: Buffer) => {
      if (err.length < 64 * 1024) err += c.toString('utf8');
      feed(c);
    });
    child.on('error', (e) => reject(new Error(`cannot run ${cmd}: ${e.message}`)));
    child.stdin.on('error', () => {
      /* the tool may exit before reading all input (e.g. xz on garbage) */
    });
    child.on('close', (code, signal) => {
      if (opts.onLine && pending) opts.onLine(pending);
      resolve({ code: code ?? -1, signal, stdout: Buffer.concat(out), stderr: err });
    });
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

/** Runs a command; rejects with `<what> failed: <stderr>; <hint>` on failure, or `cannot run <cmd>: …; <hint>` when it is missing. */
export async function run(
  cmd: string,
  args: string[],
  opts: RunOptions & { what?: string; hint?: string } = {},
): Promise<string> {
  const r = await runRaw(cmd, args, opts).catch((e: unknown) => {
    throw new Error(`${e instanceof Error ? e.message : String(e)}${opts.hint ? `; ${opts.hint}` : ''}`);
  });
  if (r.code !== 0) {
    const what = opts.what ?? `${cmd} ${args.join(' ')}`;
    const lines = r.stderr.trim().split('\n').filter((l) => l.trim());
    const picked = lines.length > 5 ? [...lines.slice(0, 2), '...', ...lines.slice(-3)] : lines;
    const detail = picked.join(' | ') || `exit code ${r.code}`;
    throw new Error(`${what} failed: ${detail}${opts.hint ? `; ${opts.hint}` : ''}`);
  }
  return r.stdout.toString('utf8');
}
