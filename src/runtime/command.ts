// Running helper programs (mount, crun, ip, ...): what a failure says.
import { execFile } from "node:child_process";
import { promisify } from "node:util";

export const execFileAsync = promisify(execFile);

/** The text of a failed command: its stderr when it printed one, else the error message. */
export function commandErrorText(err: unknown): string {
  const e = err as { stderr?: unknown; message?: unknown };
  const stderr = typeof e.stderr === "string" ? e.stderr.trim() : "";
  return stderr !== "" ? stderr : String(e.message ?? err).trim();
}
