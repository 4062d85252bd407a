// The shim's ttrpc socket address, computed as containerd's runc shim does so
// that one shim serves every container of a pod:
//   unix:///run/containerd/s/ + hex(sha256("<-address>/<namespace>/<group>"))
// where group is the pod's sandbox id (config.json annotation) or the task id.
// The address is also stored raw (no newline) in <bundle>/address, which
// containerd reads back after a restart.
import { createHash } from "node:crypto";
import { promises as fsp } from "node:fs";
import net from "node:net";
import path from "node:path";
import { Code } from "../protocols/ttrpc/status.js";
import { RuntimeError } from "../runtime/errors.js";

/** Where shim sockets live; HAKO_SHIM_SOCKET_DIR overrides it (tests). */
export const DEFAULT_SOCKET_DIR = "/run/containerd/s";
/** Longest unix socket path Go's runc shim allows (sun_path is 108 bytes). */
export const SOCKET_PATH_MAX = 106;
export const ADDRESS_FILE = "address";

/** Annotations naming the group (pod) a task belongs to, in lookup order. */
export const GROUP_ANNOTATIONS = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"] as const;

const UNIX_PREFIX = "unix://";

export function socketDir(): string {
  return process.env.HAKO_SHIM_SOCKET_DIR || DEFAULT_SOCKET_DIR;
}

/**
 * The address (`unix:///…`) of the shim serving `group` in `namespace` for
 * the containerd at `containerdAddress`. Throws if the path is too long.
 */
export function shimSocketAddress(
  containerdAddress: string,
  namespace: string,
  group: string,
  dir: string = socketDir(),
): string {
  const key = path.posix.join(containerdAddress, namespace, group);
  const digest = createHash("sha256").update(key).digest("hex");
  const sockPath = path.posix.join(dir, digest);
  if (sockPath.length > SOCKET_PATH_MAX) {
    throw new RuntimeError(Code.INVALID_ARGUMENT, group, `shim socket path ${sockPath} is longer than ${SOCKET_PATH_MAX} characters`);
  }
  return `${UNIX_PREFIX}${sockPath}`;
}

/** The filesystem path of a `unix://` address (a plain path is returned as is). */
export function socketPathOf(address: string): string {
  return address.startsWith(UNIX_PREFIX) ? address.slice(UNIX_PREFIX.length) : address;
}

/**
 * The group of task `id` from `<bundle>/config.json`: the
 * `io.containerd.runc.v2.group` or `io.kubernetes.cri.sandbox-id` annotation,
 * else the id itself (also when config.json is missing or unreadable).
 */
export async function readGroupId(bundle: string, id: string): Promise<string> {
  let annotations: unknown;
  try {
    const spec = JSON.parse(await fsp.readFile(path.join(bundle, "config.json"), "utf8")) as unknown;
    annotations = spec !== null && typeof spec === "object" ? (spec as { annotations?: unknown }).annotations : undefined;
  } catch {
    return id;
  }
  if (annotations === null || typeof annotations !== "object") return id;
  const table = annotations as Record<string, unknown>;
  for (const key of GROUP_ANNOTATIONS) {
    const v = table[key];
    if (typeof v === "string" && v !== "") return v;
  }
  return id;
}

/** Writes `<bundle>/address` atomically (temp file + rename), no newline. */
export async function writeAddressFile(bundle: string, address: string): Promise<void> {
  const target = path.join(bundle, ADDRESS_FILE);
  const tmp = path.join(bundle, `.${ADDRESS_FILE}.${process.pid}.tmp`);
  try {
    await fsp.writeFile(tmp, address, { mode: 0o644 });
    await fsp.rename(tmp, target);
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw new RuntimeError(Code.INTERNAL, path.basename(bundle), `writing ${target}: ${(err as Error).message}`, { cause: err });
  }
}

/** Reads `<bundle>/address` back (raw, surrounding whitespace trimmed). */
export async function readAddressFile(bundle: string): Promise<string> {
  const file = path.join(bundle, ADDRESS_FILE);
  try {
    return (await fsp.readFile(file, "utf8")).trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code === "ENOENT" ? Code.NOT_FOUND : Code.INTERNAL;
    throw new RuntimeError(code, path.basename(bundle), `reading ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** True if something accepts connections on the unix socket (address or path). */
export function isSocketConnectable(address: string, timeoutMs = 1000): Promise<boolean> {
  const sockPath = socketPathOf(address);
  return new Promise<boolean>((resolve) => {
    const sock = net.createConnection(sockPath);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}
