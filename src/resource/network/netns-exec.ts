// Runs iproute2 commands (`ip`, `tc`) inside a network namespace given by its
// path. A netns under /run/netns (CNI's cni-…, `ip netns add`) is named:
// `ip -n NAME` / `tc -n NAME` enter it themselves. Any other path
// (/proc/<pid>/ns/net) goes through `nsenter --net=<path>`, one exec more per
// command (host CPU a pod start's guest competes for on a small host).
import { execFileAsync } from "../../runtime/command.js";

export type NetnsTool = "ip" | "tc";

/**
 * Runs `tool args…` in the netns, with `input` on its stdin (`tc -batch -`);
 * resolves with stdout, rejects with NetnsCommandError.
 */
export type NetnsRunner = (tool: NetnsTool, args: readonly string[], input?: string) => Promise<string>;

/** The name of a netns that iproute2's `-n` finds (/run/netns/NAME, /var/run/netns/NAME), else undefined. */
export function namedNetns(netnsPath: string): string | undefined {
  const m = /^(?:\/var)?\/run\/netns\/([^/]+)$/.exec(netnsPath);
  return m && m[1] !== "." && m[1] !== ".." ? m[1] : undefined;
}

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

  /** nsenter (or `ip -n`/`tc -n`) could not open the namespace file: the netns is gone. */
  get netnsMissing(): boolean {
    return /nsenter: (cannot open|reassociate)|Cannot open network namespace/i.test(this.stderr) && /No such file|Invalid argument/i.test(this.stderr);
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

/** A runner for `netnsPath`: `tool -n NAME` for a named netns, else through nsenter. */
export function nsenterRunner(netnsPath: string): NetnsRunner {
  const name = namedNetns(netnsPath);
  return async (tool, args, input) => {
    const [file, argv] = name !== undefined ? [tool, ["-n", name, ...args]] : ["nsenter", [`--net=${netnsPath}`, "--", tool, ...args]];
    const command = `${tool} ${args.join(" ")}`;
    try {
      const running = execFileAsync(file, argv, { encoding: "utf8", maxBuffer: 16 * 1024 * 1024, timeout: 10_000 });
      // A tool that exits before reading (a bad netns) must not take the process down with EPIPE.
      running.child.stdin?.on("error", () => undefined);
      running.child.stdin?.end(input);
      const { stdout } = await running;
      return stdout;
    } catch (err) {
      const e = err as { stderr?: unknown; code?: unknown; message?: unknown };
      const stderr = typeof e.stderr === "string" && e.stderr !== "" ? e.stderr : String(e.message ?? err);
      throw new NetnsCommandError(netnsPath, command, stderr, typeof e.code === "number" ? e.code : undefined, err);
    }
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
