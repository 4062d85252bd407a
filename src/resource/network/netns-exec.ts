// Runs iproute2 commands (`ip`, `tc`) inside a network namespace given by its
// path. `ip -n NAME` only understands names under /var/run/netns, while CRI
// hands us arbitrary paths (/var/run/netns/cni-…, /proc/<pid>/ns/net), so every
// command goes through `nsenter --net=<path>`.
import { execFileAsync } from "../../runtime/command.js";

export type NetnsTool = "ip" | "tc";

/** Runs `tool args…` in the netns; resolves with stdout, rejects with NetnsCommandError. */
export type NetnsRunner = (tool: NetnsTool, args: readonly string[]) => Promise<string>;

export class NetnsCommandError extends Error {
  readonly netnsPath: string;
  readonly command: string;
  readonly stderr: string;
  readonly exitCode: number | undefined;

  constructor(netnsPath: string, command: string, stderr: string, exitCode: number | undefined, cause?: unknown) {
    super(`${command} in netns ${netnsPath} failed${exitCode === undefined ? "" : ` (exit ${exitCode})`}: ${stderr.trim() || "no output"}`, cause === undefined ? undefined : { cause });
    this.name = "NetnsCommandError";
    this.netnsPath = netnsPath;
    this.command = command;
    this.stderr = stderr;
    this.exitCode = exitCode;
  }

  /** nsenter could not open the namespace file: the netns is gone. */
  get netnsMissing(): boolean {
    return /nsenter: (cannot open|reassociate)/i.test(this.stderr) && /No such file|Invalid argument/i.test(this.stderr);
  }
  get busy(): boolean {
    return /resource busy|EBUSY/i.test(this.stderr);
  }
  /** The object to delete or show does not exist (device, qdisc or filter). */
  get notFound(): boolean {
    return /Cannot find device|does not exist|Invalid handle|Cannot find specified|not found|No such device/i.test(this.stderr);
  }
  get exists(): boolean {
    return /File exists|Exclusivity flag on|already exists/i.test(this.stderr);
  }
}

/** A runner that enters `netnsPath` with nsenter for every command. */
export function nsenterRunner(netnsPath: string): NetnsRunner {
  return async (tool, args) => {
    const argv = [`--net=${netnsPath}`, "--", tool, ...args];
    const command = `${tool} ${args.join(" ")}`;
    try {
      const { stdout } = await execFileAsync("nsenter", argv, { encoding: "utf8", maxBuffer: 16 * 1024 * 1024, timeout: 10_000 });
      return stdout;
    } catch (err) {
      const e = err as { stderr?: unknown; code?: unknown; message?: unknown };
      const stderr = typeof e.stderr === "string" && e.stderr !== "" ? e.stderr : String(e.message ?? err);
      throw new NetnsCommandError(netnsPath, command, stderr, typeof e.code === "number" ? e.code : undefined, err);
    }
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
