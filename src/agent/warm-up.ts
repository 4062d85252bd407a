// Warm-up of the agent's own code paths before a VM template is saved.
//
// A clone resumes the template's memory, and with it whatever V8 had parsed,
// compiled and optimised in the template's agent; what the template never ran
// is compiled in every clone, under TCG, on the pod-start path. So the
// template's agent runs, once, the paths a pod start takes: process spawns
// (execFile, the helper shell, a piped and a pseudo-terminal GuestProcess), the network script
// builders and runner, and waits for them. Nothing is left behind: only
// /bin/true runs, and the builders are pure.
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { execFileAsync } from "../runtime/command.js";
import { GuestProcess } from "./guest-process.js";
import { runCommand } from "./helper-shell.js";
import { interfaceCommands, listLinks, neighborCommands, resetInterface, routeCommands, runCommands, updateInterface, updateRoutes } from "./guest-network.js";

export async function warmUp(rounds = 3): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < rounds; i++) {
    await execFileAsync("/bin/true", [], { encoding: "utf8", timeout: 10_000 });
    await runCommand("/bin/true", []);
    await runCommands("warm-up", [["/bin/true"], ["/bin/true"]], "");
    for (const terminal of [false, true]) {
      const p = new GuestProcess("/bin/true", [], { terminal });
      await p.exited;
    }
    interfaceCommands(
      { device: "eth0", name: "eth0", hwAddr: "02:00:00:00:00:01", mtu: 1500, addresses: [{ family: 4, address: "10.0.0.2", prefixLength: 24 }] },
      [{ name: "eth0", mac: "02:00:00:00:00:02", up: false }],
    );
    routeCommands([{ dest: "0.0.0.0/0", gateway: "10.0.0.1", device: "eth0", source: "", scope: 0 }], () => true);
    neighborCommands([{ toIpAddress: "10.0.0.1", device: "eth0", llAddr: "02:00:00:00:00:03", state: 0x80 }], () => true);
  }
  return performance.now() - t0;
}

/**
 * The guest network set-up's tools (a shell running `ip` link, address, route
 * and neighbour commands) on the loopback device, leaving it as it was: a
 * cached VM's pod then runs translated (TCG) code when it configures eth0.
 */
export async function warmUpNetworkTools(): Promise<void> {
  await runCommands(
    "warm-up",
    [
      ["ip", "link", "set", "dev", "lo", "up"],
      ["ip", "addr", "add", "127.0.0.9/8", "dev", "lo"],
      ["ip", "route", "replace", "127.9.0.0/16", "dev", "lo"],
      ["ip", "route", "del", "127.9.0.0/16", "dev", "lo"],
      ["ip", "addr", "del", "127.0.0.9/8", "dev", "lo"],
      ["ip", "neigh", "show", "dev", "lo"],
    ],
    "",
  );
}

/** What the warm-up gives a NIC for a moment: a link-local /30 and a locally administered MAC. */
const WARM_UP_NIC = { address: "169.254.253.2", prefixLength: 30, gateway: "169.254.253.1", mac: "02:68:61:6b:6f:01" } as const;

/**
 * The set-up a pod's first UpdateInterface and UpdateRoutes do, on the VM's
 * own NICs, undone after: a warm clone's pod then finds the virtio-net open,
 * MAC change (its control queue), address and route code translated: with
 * the `ip` tools warmed on lo only (above), a cached VM's pod took 27-40 ms
 * for its `ip link set … address … up`, 16-21 ms with this (docs/templating.md).
 * Only a fresh NIC (down, never configured) is used; it is left down, without
 * addresses or routes, with its own MAC. Its packets (IPv6 DAD, router
 * solicitation) go to a tap nobody reads: a cached VM's is in the VM cache's
 * netns, a template's in factory init's scratch netns.
 */
export async function warmUpNics(): Promise<void> {
  for (const link of listLinks()) {
    if (link.name === "lo" || link.up || !/^eth\d+$/.test(link.name)) continue;
    try {
      await updateInterface({ device: link.name, name: link.name, hwAddr: WARM_UP_NIC.mac, mtu: 0, addresses: [{ family: 4, address: WARM_UP_NIC.address, prefixLength: WARM_UP_NIC.prefixLength }] });
      await updateRoutes([
        { dest: `${WARM_UP_NIC.gateway}/32`, gateway: "", device: link.name, source: "", scope: 253 },
        { dest: "0.0.0.0/0", gateway: WARM_UP_NIC.gateway, device: link.name, source: "", scope: 0 },
      ]);
    } finally {
      await resetInterface(link.name, link.mac);
    }
  }
}

/** What PrepareTemplate runs, in order. */
export type WarmUpStep = "spawns" | "pod-pid-namespace" | "network-tools" | "nics" | "container";

/**
 * The warm-up of a template (`inClone` false) or of a cached VM, a clone of
 * one (true). A clone skips the spawn rounds (`warmUp`): its template ran
 * them for V8, and what a pod start spawns (the helper shell, crun over pipes)
 * the later steps run too; the rest (execFile, a pty) cost each cached pod
 * ~3 MiB of translated code and guest RAM that no pod start uses (cache pods
 * 95.5 -> 92.4 MiB with KSM, no start-time difference: docs/benchmarks.md,
 * fourteenth stop).
 */
export function warmUpSteps(inClone: boolean, runContainer: boolean): WarmUpStep[] {
  return [...(inClone ? [] : ["spawns" as const]), "pod-pid-namespace", ...(runContainer ? (["network-tools", "nics", "container"] as const) : [])];
}

/** V8's `gc` (node --expose-gc: a template's agent under TCG, and its clones'). */
export type GcFunction = (opts?: { type: "minor" | "major" }) => void;

/**
 * Empties the young generation after a warm-up, so that a pod's first
 * scavenge comes after its start, not in it. A template (`inClone`
 * false) is saved after a full GC. A cached VM, a clone warming up again,
 * scavenges twice instead (the second promotes what survived the first):
 * a full GC there cost each cached VM ~3 MiB of guest RAM it rewrote
 * (marking, compaction) and ~2 MiB of translated code that no pod start
 * runs (docs/benchmarks.md, fourteenth stop).
 */
export function collectAfterWarmUp(gc: GcFunction | undefined, inClone: boolean): void {
  if (gc === undefined) return;
  if (!inClone) return gc();
  gc({ type: "minor" });
  gc({ type: "minor" });
}

/** Id of the throwaway container of a cached VM's warm-up (no pod container can have it: CRI ids are hex). */
export const WARM_UP_CONTAINER = "hako-warm-up";

/**
 * A pod container's shape, run once in a VM the VM cache keeps ready: crun
 * create/start/delete, its namespaces, cgroup, mounts and limits go through
 * TCG (and the guest's caches) before a pod's first container needs them.
 * Its root is an empty directory with the guest's program directories bound
 * in read-only; it runs /bin/true and leaves nothing but that directory.
 */
export function warmUpSpec(): object {
  const root = "/run/hako/warm-up-rootfs";
  const binds = ["bin", "sbin", "lib", "lib64", "usr"].filter((d) => existsSync(`/${d}`));
  for (const d of [...binds, "proc", "dev", "sys", "tmp"]) mkdirSync(join(root, d), { recursive: true });
  return {
    ociVersion: "1.0.2",
    process: { args: ["/bin/true"], cwd: "/", env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], user: { uid: 0, gid: 0 }, noNewPrivileges: true },
    root: { path: root, readonly: true },
    hostname: WARM_UP_CONTAINER,
    mounts: [
      ...binds.map((d) => ({ destination: `/${d}`, type: "bind", source: `/${d}`, options: ["rbind", "ro"] })),
      { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      { destination: "/dev/pts", type: "devpts", source: "devpts", options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      { destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "relatime", "ro"] },
    ],
    linux: {
      namespaces: [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, { type: "cgroup" }],
      cgroupsPath: `/hako/${WARM_UP_CONTAINER}`,
      resources: { memory: { limit: 64 * 1024 * 1024 }, cpu: { quota: 50000, period: 100000 } },
      maskedPaths: ["/proc/kcore", "/proc/keys", "/sys/firmware"],
      readonlyPaths: ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"],
    },
  };
}
