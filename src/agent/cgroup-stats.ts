// Reads a container's cgroup v2 statistics inside the guest.
import { readFileSync } from "node:fs";
import { join } from "node:path";

export interface CgroupStats {
  cpu: { usageUsec: bigint; userUsec: bigint; systemUsec: bigint; throttledPeriods: bigint; throttledUsec: bigint };
  memory: { usage: bigint; maxUsage: bigint; limit: bigint; anon: bigint; file: bigint; inactiveFile: bigint; activeFile: bigint; oomKill: bigint };
  pids: { current: bigint; limit: bigint };
  processIds: number[];
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

function keyed(text: string): Map<string, bigint> {
  const m = new Map<string, bigint>();
  for (const line of text.split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v && /^\d+$/.test(v)) m.set(k, BigInt(v));
  }
  return m;
}

function single(path: string): bigint {
  const t = readText(path).trim();
  if (/^\d+$/.test(t)) return BigInt(t);
  return 0n;
}

export function readCgroupStats(dir: string): CgroupStats {
  const cpu = keyed(readText(join(dir, "cpu.stat")));
  const mem = keyed(readText(join(dir, "memory.stat")));
  const events = keyed(readText(join(dir, "memory.events")));
  const procs = readText(join(dir, "cgroup.procs"))
    .split("\n")
    .filter((l) => /^\d+$/.test(l.trim()))
    .map(Number);
  return {
    cpu: {
      usageUsec: cpu.get("usage_usec") ?? 0n,
      userUsec: cpu.get("user_usec") ?? 0n,
      systemUsec: cpu.get("system_usec") ?? 0n,
      throttledPeriods: cpu.get("nr_throttled") ?? 0n,
      throttledUsec: cpu.get("throttled_usec") ?? 0n,
    },
    memory: {
      usage: single(join(dir, "memory.current")),
      maxUsage: single(join(dir, "memory.peak")),
      limit: single(join(dir, "memory.max")),
      anon: mem.get("anon") ?? 0n,
      file: mem.get("file") ?? 0n,
      inactiveFile: mem.get("inactive_file") ?? 0n,
      activeFile: mem.get("active_file") ?? 0n,
      oomKill: events.get("oom_kill") ?? 0n,
    },
    pids: { current: single(join(dir, "pids.current")), limit: single(join(dir, "pids.max")) },
    processIds: procs,
  };
}
