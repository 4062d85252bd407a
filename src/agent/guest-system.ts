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

/**
 * The whole second (since the epoch) to step the guest clock to at once, or
 * undefined when it is within a second of the host's (ms since the epoch,
 * the host's from the request). busybox `date -s` sets whole seconds, so a
 * step leaves the guest behind by the host's fraction of a second, as does
 * a cold VM's boot (it reads the host's RTC); clockAlignment() then sets it
 * exactly, later.
 */
export function clockStep(hostMs: number, guestMs: number): bigint | undefined {
  if (!(hostMs > 0) || Math.abs(guestMs - hostMs) <= 1000) return undefined;
  return BigInt(Math.floor(hostMs / 1000));
}

/**
 * When a guest clock `offMs` away from the host's (after any step) is set
 * again, and to what: the first whole second of the host's clock at least
 * ALIGN_AFTER_MS ahead, and how long until the host reaches it. Setting the
 * guest to that second then leaves it behind by the spawn's latency only
 * (and only moves it forward). ALIGN_AFTER_MS keeps that spawn (~0.1 s of a
 * cold guest's CPU under TCG) out of the pod's start. Undefined when the
 * clock is already within ALIGN_SLACK_MS.
 */
export function clockAlignment(hostMs: number, offMs: number): { toSec: bigint; inMs: number } | undefined {
  if (!(hostMs > 0) || Math.abs(offMs) <= ALIGN_SLACK_MS) return undefined;
  const sec = Math.ceil((hostMs + ALIGN_AFTER_MS) / 1000);
  return { toSec: BigInt(sec), inMs: sec * 1000 - hostMs };
}

/** How far behind the host a guest clock may stay (a request's own latency is about this). */
export const ALIGN_SLACK_MS = 50;
/** How long after CreateSandbox the exact setting waits, at least. */
export const ALIGN_AFTER_MS = 3_000;

/**
 * Brings the guest clock to the host's, given in a request that arrived just
 * now (ms since the epoch; 0: none): a step at once if it is more than a
 * second off (clockStep), then the exact setting a few seconds later on its
 * own (clockAlignment; skipped if the clock was stepped again meanwhile, by
 * another CreateSandbox or SetGuestDateTime). Resolves once the step is done.
 */
export function syncClock(hostMs: number): Promise<void> {
  const arrived = performance.now();
  const step = clockStep(hostMs, Date.now());
  const stepped = step !== undefined ? setClock(step) : Promise.resolve();
  void stepped.then(() => {
    const hostNow = hostMs + (performance.now() - arrived);
    const next = clockAlignment(hostNow, Date.now() - hostNow);
    if (next === undefined) return;
    const due = Number(next.toSec) * 1000;
    setTimeout(() => {
      if (Math.abs(Date.now() - due) < 1500) void setClock(next.toSec);
    }, next.inMs).unref();
  });
  return stepped;
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
