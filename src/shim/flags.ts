// Command line of containerd-shim-hako-v2, parsed the way Go's `flag` package
// does (containerd builds it that way):
//   -namespace ns -address /run/containerd/containerd.sock
//   -publish-binary /usr/bin/containerd -id ID [-bundle B] [-debug] start|delete
// Flags take one or two dashes, `-flag value` or `-flag=value`; boolean flags
// never consume the next argument (`-debug=false` to unset). Parsing stops at
// the first non-flag argument or at `--`; that argument is the action.
// `serve` is hako's own action: the long-running daemon `start` spawns;
// `spare` another: a daemon waiting for the next pod (spare.ts).
import { Code } from "../protocols/ttrpc/status.js";
import { RuntimeError } from "../runtime/errors.js";

export type ShimAction = "start" | "delete" | "serve" | "spare" | "version";

export interface ShimFlags {
  action: ShimAction;
  /** containerd namespace (`-namespace`), e.g. `k8s.io` or `default`. */
  namespace: string;
  /** containerd's gRPC socket path (`-address`); part of the socket hash. */
  address: string;
  /** containerd binary for the legacy `publish` command (`-publish-binary`). */
  publishBinary: string;
  /** Task id (`-id`). */
  id: string;
  /** Bundle directory (`-bundle`); defaults to the working directory. */
  bundle: string;
  /** `-socket`: the shim's own ttrpc address (`unix:///…`); `start` passes it to `serve`. */
  socket: string;
  debug: boolean;
  /** Everything after the action (unused by containerd). */
  rest: string[];
}

type StringKey = "namespace" | "address" | "publishBinary" | "id" | "bundle" | "socket";

const STRING_FLAGS: Record<string, StringKey> = {
  namespace: "namespace",
  address: "address",
  "publish-binary": "publishBinary",
  id: "id",
  bundle: "bundle",
  socket: "socket",
};
const BOOL_FLAGS = new Set(["debug", "v", "version"]);
const ACTIONS = new Set<string>(["start", "delete", "serve", "spare"]);

function usageError(message: string): RuntimeError {
  return new RuntimeError(Code.INVALID_ARGUMENT, "", message, {
    hint: "usage: containerd-shim-hako-v2 -namespace NS -address SOCK -id ID [-bundle DIR] [-debug] start|delete",
  });
}

function parseBool(name: string, value: string): boolean {
  // Go's strconv.ParseBool.
  if (["1", "t", "T", "true", "TRUE", "True"].includes(value)) return true;
  if (["0", "f", "F", "false", "FALSE", "False"].includes(value)) return false;
  throw usageError(`invalid boolean value "${value}" for flag -${name}`);
}

/**
 * Parses the shim's argv (without node and script). `cwd` is the default
 * bundle. Throws a RuntimeError (INVALID_ARGUMENT) on bad usage.
 */
export function parseShimFlags(argv: readonly string[], cwd: string = process.cwd()): ShimFlags {
  const flags: ShimFlags = {
    action: "serve",
    namespace: "",
    address: "",
    publishBinary: "",
    id: "",
    bundle: "",
    socket: "",
    debug: false,
    rest: [],
  };
  let version = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      i++;
      break;
    }
    if (arg.length < 2 || arg[0] !== "-") break;
    const body = arg.startsWith("--") ? arg.slice(2) : arg.slice(1);
    if (body === "" || body.startsWith("-") || body.startsWith("=")) throw usageError(`bad flag syntax: ${arg}`);
    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const inline = eq < 0 ? undefined : body.slice(eq + 1);
    if (BOOL_FLAGS.has(name)) {
      const on = inline === undefined ? true : parseBool(name, inline);
      if (name === "debug") flags.debug = on;
      else version = on;
      continue;
    }
    const key = STRING_FLAGS[name];
    if (key === undefined) throw usageError(`flag provided but not defined: -${name}`);
    let value = inline;
    if (value === undefined) {
      if (i + 1 >= argv.length) throw usageError(`flag needs an argument: -${name}`);
      value = argv[++i]!;
    }
    flags[key] = value;
  }
  const positional = argv.slice(i);
  if (version) {
    flags.action = "version";
    flags.rest = positional;
  } else {
    const action = positional[0];
    if (action === undefined) throw usageError("missing action (start, delete or serve)");
    if (!ACTIONS.has(action)) throw usageError(`unknown action "${action}"`);
    flags.action = action as ShimAction;
    flags.rest = positional.slice(1);
  }
  if (flags.bundle === "") flags.bundle = cwd;
  if (flags.action !== "version") {
    if (flags.namespace === "") throw usageError("shim namespace cannot be empty (-namespace)");
    if (flags.id === "") throw usageError("shim id cannot be empty (-id)");
  }
  return flags;
}

/**
 * The argv that reproduces `flags` (for spawning the daemon), action last.
 * Empty values are left out.
 */
export function formatShimFlags(flags: ShimFlags, action: ShimAction = flags.action): string[] {
  const out: string[] = [];
  const add = (name: string, value: string): void => {
    if (value !== "") out.push(`-${name}`, value);
  };
  add("namespace", flags.namespace);
  add("address", flags.address);
  add("publish-binary", flags.publishBinary);
  add("id", flags.id);
  add("bundle", flags.bundle);
  add("socket", flags.socket);
  if (flags.debug) out.push("-debug");
  out.push(action === "version" ? "-v" : action);
  return out;
}
