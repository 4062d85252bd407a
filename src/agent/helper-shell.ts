// The helper shell: a busybox sh that agent.sh starts beside the agent (before
// node, so its own fork is cheap) and connects to it by two FIFOs. The agent
// runs its short commands (network set-up, mount, date, crun kill/delete)
// through it instead of spawning them: libuv spawns by fork() on Linux, so a
// spawn copies the agent's page tables, and a script also paid an exec of
// /bin/sh. In a cold guest under TCG this took the network set-up from
// ~272 to ~198 ms (docs/architecture.md, "In the guest").
//
// Protocol, one line each way: the agent writes the script to a file in
// HELPER_DIR and sends "ID FILE"; the helper runs it in a subshell with
// stdin from /dev/null, stdout and stderr to FILE.out and FILE.err, and
// answers "ID STATUS". Scripts run concurrently, as spawns would (a 9p mount
// waits on the host while an `ip` runs): each in a background job that init
// reaps, so the helper never waits and leaves no zombie.
// Without a helper (an agent started by hand, or one whose helper is gone)
// commands are spawned directly, as before.
import { closeSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Socket } from "node:net";
import type { Readable, Writable } from "node:stream";
import { execFileAsync } from "../runtime/command.js";

/** Where the FIFOs (in, out) and the scripts live (a tmpfs). */
export const HELPER_DIR = "/run/hako/helper";
/** The environment variable agent.sh sets to the FIFOs' fds: "IN,OUT" (the agent writes IN, reads OUT). */
export const HELPER_FDS_ENV = "HAKO_HELPER_FDS";
/** Longest a command may run (the agent's callers used the same for direct spawns). */
export const COMMAND_TIMEOUT_MS = 30_000;

/**
 * The helper's loop, installed as /etc/hako/helper.sh. `read -r` returns
 * false at EOF (the agent exited), which ends it.
 */
export const HELPER_SH = `#!/bin/sh
# hako helper shell: runs the agent's commands without the agent forking.
# Reads "ID SCRIPT" lines, answers "ID STATUS" (src/agent/helper-shell.ts).
while read -r id script; do
  ( { ( . "$script" ) </dev/null >"$script.out" 2>"$script.err"; echo "$id $?"; } & )
done
`;

export interface CommandOutput {
  stdout: string;
  stderr: string;
}

/** A command that exited non-zero, shaped like child_process.execFile's error (commandErrorText reads `stderr`). */
export class CommandFailed extends Error {
  constructor(
    readonly command: string,
    readonly status: number,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`Command failed (status ${status}): ${command}${stderr.trim() ? `\n${stderr.trim()}` : ""}`);
  }
}

/** Single-quotes a word for sh (values are validated too; this is the second guard). */
export function shQuote(word: string): string {
  return /^[A-Za-z0-9_.:/=@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

interface Pending {
  script: string;
  file: string;
  resolve: (out: CommandOutput) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class HelperShell {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private brokenBy: string | undefined;

  constructor(
    private readonly toHelper: Writable,
    fromHelper: Readable,
    private readonly dir: string,
  ) {
    // Split by hand: node:readline would be one more module to load at agent start (costly under TCG).
    let partial = "";
    fromHelper.setEncoding("utf8");
    fromHelper.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) this.answer(line);
    });
    fromHelper.once("close", () => this.breakDown("the helper shell exited"));
    fromHelper.on("error", (err) => this.breakDown(`reading from the helper shell failed: ${err.message}`));
    toHelper.on("error", (err) => this.breakDown(`writing to the helper shell failed: ${err.message}`));
  }

  /** Why the helper is no longer used, or undefined while it is. */
  get broken(): string | undefined {
    return this.brokenBy;
  }

  /** Runs an sh script in the helper; rejects with CommandFailed on a non-zero status. */
  run(script: string, timeoutMs = COMMAND_TIMEOUT_MS): Promise<CommandOutput> {
    if (this.brokenBy !== undefined) return Promise.reject(new Error(`helper shell unusable: ${this.brokenBy}`));
    const id = this.nextId++;
    const file = `${this.dir}/${id}.sh`;
    return new Promise<CommandOutput>((resolve, reject) => {
      try {
        writeFileSync(file, script);
      } catch (err) {
        reject(err as Error);
        return;
      }
      const timer = setTimeout(() => {
        // Left running (its answer is ignored); the others go on.
        this.pending.delete(id);
        removeScriptFiles(file);
        reject(new Error(`${scriptLabel(script)}: did not finish within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { script, file, resolve, reject, timer });
      this.toHelper.write(`${id} ${file}\n`);
    });
  }

  private answer(line: string): void {
    const m = /^(\d+) (\d+)$/.exec(line);
    const p = m ? this.pending.get(Number(m[1])) : undefined;
    if (!m || !p) return; // not ours (a stray echo from a script would have gone to its .out)
    this.pending.delete(Number(m[1]));
    clearTimeout(p.timer);
    const status = Number(m[2]);
    const out = { stdout: readText(`${p.file}.out`), stderr: readText(`${p.file}.err`) };
    removeScriptFiles(p.file);
    if (status === 0) p.resolve(out);
    else p.reject(new CommandFailed(scriptLabel(p.script), status, out.stdout, out.stderr));
  }

  private breakDown(why: string): void {
    if (this.brokenBy !== undefined) return;
    this.brokenBy = why;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      removeScriptFiles(p.file);
      p.reject(new Error(`${scriptLabel(p.script)}: ${why}`));
      this.pending.delete(id);
    }
    this.toHelper.destroy();
  }
}

/** What a failure names: the script's last line (the command, for a one-line `exec`). */
function scriptLabel(script: string): string {
  const lines = script.trim().split("\n");
  const last = lines[lines.length - 1] ?? "";
  return (lines.length > 1 ? `${last} (line ${lines.length} of a script)` : last).replace(/^exec /, "");
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

/** A script's file and the two its run writes. */
function removeScriptFiles(file: string): void {
  for (const f of [file, `${file}.out`, `${file}.err`]) rmSync(f, { force: true });
}

let helper: HelperShell | undefined;

/** The helper, while it takes commands. */
const usableHelper = (): HelperShell | undefined => (helper?.broken === undefined ? helper : undefined);

/** Uses this helper from now on (tests; attachHelperFromEnv in the guest). */
export function useHelperShell(h: HelperShell | undefined): void {
  helper = h;
}

/**
 * Takes over the FIFOs agent.sh passed (HELPER_FDS_ENV), reopened close-on-exec
 * so that no process the agent spawns inherits them. Returns false when there
 * is no helper (commands are then spawned directly).
 */
export function attachHelperFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const spec = env[HELPER_FDS_ENV];
  delete env[HELPER_FDS_ENV];
  const m = spec ? /^(\d+),(\d+)$/.exec(spec) : null;
  if (!m) return false;
  const [inFd, outFd] = [Number(m[1]), Number(m[2])];
  try {
    // libuv opens with O_CLOEXEC; the helper holds both FIFOs open, so neither open blocks.
    const toFd = openSync(`/proc/self/fd/${inFd}`, "w");
    const fromFd = openSync(`/proc/self/fd/${outFd}`, "r");
    closeSync(inFd);
    closeSync(outFd);
    useHelperShell(new HelperShell(new Socket({ fd: toFd, readable: false, writable: true }), new Socket({ fd: fromFd, readable: true, writable: false }), HELPER_DIR));
    return true;
  } catch {
    return false;
  }
}

/** Runs `file args…` (in the helper shell when there is one); rejects like execFile on failure. */
export async function runCommand(file: string, args: readonly string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<CommandOutput> {
  const h = usableHelper();
  if (h) return h.run(`exec ${[file, ...args].map(shQuote).join(" ")}\n`, timeoutMs);
  return execFileAsync(file, [...args], { encoding: "utf8", timeout: timeoutMs });
}

/** Runs an sh script (in the helper shell when there is one, else `sh -c`); rejects like execFile on failure. */
export async function runScript(script: string, timeoutMs = COMMAND_TIMEOUT_MS): Promise<CommandOutput> {
  const h = usableHelper();
  if (h) return h.run(script, timeoutMs);
  return execFileAsync("/bin/sh", ["-c", script], { encoding: "utf8", timeout: timeoutMs });
}
