// Guest-wide set-up the agent performs: hostname, mounts, clock, details.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, release, totalmem } from "node:os";
import { Code } from "../protocols/ttrpc/status.js";
import { AgentError } from "../runtime/errors.js";
import { commandErrorText } from "../runtime/command.js";
import { runCommand as run } from "./helper-shell.js";
import type { GuestStorage } from "../resource/sharefs/share-fs.js";

/** True if `source` is already mounted on `mountPoint` with filesystem type `fstype` (e.g. by the guest's init). */
function alreadyMounted(source: string, mountPoint: string, fstype: string): boolean {
  try {
    return readFileSync("/proc/mounts", "utf8")
      .split("\n")
      .some((l) => {
        const [src, mp, type] = l.split(" ");
        return src === source && mp === mountPoint && type === fstype;
      });
  } catch {
    return false;
  }
}

export async function mountStorage(s: GuestStorage): Promise<void> {
  if (!s.mountPoint.startsWith("/")) throw new AgentError("", `storage mount point ${s.mountPoint} must be absolute`, { code: Code.INVALID_ARGUMENT });
  if (s.driver === "9p" && alreadyMounted(s.source, s.mountPoint, "9p")) return;
  mkdirSync(s.mountPoint, { recursive: true });
  let args: string[];
  switch (s.driver) {
    case "9p":
      args = ["-t", "9p", "-o", ["trans=virtio", "version=9p2000.L", ...s.options].join(","), s.source, s.mountPoint];
      break;
    case "tmpfs":
      args = ["-t", "tmpfs", ...(s.options.length ? ["-o", s.options.join(",")] : []), "tmpfs", s.mountPoint];
      break;
    case "bind":
      args = ["--bind", s.source, s.mountPoint];
      break;
    default:
      throw new AgentError("", `unknown storage driver ${s.driver}`, { code: Code.INVALID_ARGUMENT, hint: "use 9p, tmpfs or bind" });
  }
  try {
    await run("/bin/mount", args);
  } catch (err) {
    throw new AgentError("", `mount ${s.driver} ${s.source} on ${s.mountPoint} failed: ${commandErrorText(err)}`, { code: Code.INTERNAL });
  }
}

export async function unmount(path: string): Promise<void> {
  await run("/bin/umount", ["-l", path]).catch(() => undefined);
}

/** Writes a guest file that may live on a read-only root (erofs): skipped there. */
function writeEtc(path: string, text: string): void {
  try {
    writeFileSync(path, text);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EROFS") throw err;
  }
}

export function setHostname(name: string): void {
  if (!name) return;
  writeFileSync("/proc/sys/kernel/hostname", name);
  writeEtc("/etc/hostname", `${name}\n`);
}

export function setDns(servers: string[]): void {
  if (servers.length === 0) return;
  writeEtc("/etc/resolv.conf", servers.map((s) => `nameserver ${s}\n`).join(""));
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/**
 * Mixes host-provided bytes into the kernel's entropy pool (a write to
 * /dev/urandom mixes without crediting entropy): clones of one template must
 * not go on with the same RNG state.
 */
export function mixEntropy(bytes: Uint8Array): void {
  try {
    writeFileSync("/dev/urandom", bytes);
  } catch {
    /* no /dev/urandom: nothing to reseed */
  }
}

export async function setClock(sec: bigint): Promise<void> {
  if (sec <= 0n) return;
  const d = new Date(Number(sec) * 1000);
  const text = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  await run("/bin/date", ["-u", "-s", text]).catch(() => undefined);
}

export function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "";
  }
}

/** Seconds since the guest kernel started. */
export function uptimeSec(): number {
  try {
    return Number.parseFloat(readFileSync("/proc/uptime", "utf8").split(" ")[0] ?? "0");
  } catch {
    return 0;
  }
}

let launchMs: bigint | undefined;

/** Guest uptime (ms) when init launched the agent (agent.sh writes it), 0 if unknown. */
export function agentLaunchMs(): bigint {
  if (launchMs === undefined) {
    try {
      launchMs = BigInt(Math.round((Number.parseFloat(readFileSync("/run/hako-agent-start", "utf8")) || 0) * 1000));
    } catch {
      launchMs = 0n;
    }
  }
  return launchMs;
}

export function guestDetails(agentVersion: string, readyMs: number): {
  kernelRelease: string;
  agentVersion: string;
  bootId: string;
  memTotalBytes: bigint;
  onlineCpus: number;
  agentReadyMs: bigint;
} {
  return {
    kernelRelease: release(),
    agentVersion,
    bootId: bootId(),
    memTotalBytes: BigInt(totalmem()),
    onlineCpus: cpus().length,
    agentReadyMs: BigInt(Math.round(readyMs)),
  };
}
