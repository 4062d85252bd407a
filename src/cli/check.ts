// `hako check`: can this host run hako? Every item is verified by doing the
// thing (booting a VM, creating a tc mirred filter), not by looking for files.
import { existsSync, statfsSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { probeBoot } from "../hypervisor/accel-probe.js";
import { chooseAccel } from "../runtime/accel.js";
import { guestAssets, setup, type GlobalOptions } from "./common.js";
import { commandErrorText, execFileAsync as run } from "../runtime/command.js";
import { KSM_DIR, ksmAvailable, ksmMergeAnyAvailable, readKsmSettings, readKsmStats } from "../resource/ksm.js";

export interface CheckItem {
  name: string;
  ok: boolean;
  /** Required for hako to run at all (exit status depends on it). */
  required: boolean;
  detail: string;
}

async function cmd(file: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await run(file, args, { timeout: 20_000 });
    return { ok: true, out: `${r.stdout}${r.stderr}`.trim() };
  } catch (err) {
    return { ok: false, out: commandErrorText(err) };
  }
}

function cgroupMode(): string {
  // CGROUP2_SUPER_MAGIC = 0x63677270, TMPFS_MAGIC = 0x01021994
  try {
    const t = statfsSync("/sys/fs/cgroup").type;
    if (t === 0x63677270) return "unified (cgroup v2)";
    if (existsSync("/sys/fs/cgroup/unified")) return "hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)";
    return "legacy (cgroup v1)";
  } catch {
    return "unknown";
  }
}

/** Creates a veth pair in a throwaway netns and the tc ingress + u32 mirred filter hako uses. */
async function checkTcMirred(): Promise<{ ok: boolean; detail: string }> {
  const ns = `hako-check-${randomBytes(4).toString("hex")}`;
  const add = await cmd("ip", ["netns", "add", ns]);
  if (!add.ok) return { ok: false, detail: `ip netns add failed: ${add.out}` };
  try {
    const steps: Array<[string, string[]]> = [
      ["ip", ["-n", ns, "link", "add", "hk0", "type", "veth", "peer", "name", "hk1"]],
      ["tc", ["-n", ns, "qdisc", "add", "dev", "hk0", "ingress"]],
      ["tc", ["-n", ns, "filter", "add", "dev", "hk0", "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "hk1"]],
    ];
    for (const [f, a] of steps) {
      const r = await cmd(f, a);
      if (!r.ok) return { ok: false, detail: `${f} ${a.slice(2, 5).join(" ")} failed: ${r.out}` };
    }
    return { ok: true, detail: "tc ingress + u32 mirred redirect works (in a scratch netns)" };
  } finally {
    await cmd("ip", ["netns", "del", ns]);
  }
}

export async function collectChecks(opts: GlobalOptions): Promise<CheckItem[]> {
  const { cfg, log } = setup(opts);
  const q = cfg.hypervisor.qemu;
  const items: CheckItem[] = [];
  const qv = await cmd(q.path, ["--version"]);
  items.push({ name: "qemu", ok: qv.ok, required: true, detail: qv.ok ? `${q.path}: ${qv.out.split("\n")[0]}` : `${q.path}: ${qv.out}` });
  for (const a of guestAssets(q)) {
    const have = existsSync(a.path);
    const detail = have ? `${a.path}${a.kind ? ` (${a.kind})` : ""}` : `${a.path} missing: ${a.hint}`;
    items.push({ name: a.check, ok: have, required: true, detail });
  }

  const devices = qv.ok ? (await cmd(q.path, ["-device", "help"])).out : "";
  for (const [name, dev] of [
    ["virtio-9p", "virtio-9p"],
    ["virtio-serial", "virtio-serial"],
  ] as const) {
    const ok = devices.includes(`"${dev}`);
    items.push({ name, ok, required: true, detail: ok ? `QEMU has ${dev} devices` : `QEMU lacks ${dev}` });
  }
  const vsock = existsSync("/dev/vhost-vsock");
  items.push({ name: "vsock", ok: vsock, required: false, detail: vsock ? "/dev/vhost-vsock present" : "no /dev/vhost-vsock: the agent channel uses virtio-serial" });

  const kvmPresent = existsSync("/dev/kvm");
  if (items.slice(0, 3).every((i) => i.ok)) {
    const probe = await chooseAccel(cfg, log);
    items.push({
      name: "kvm",
      ok: probe.kvmBoots,
      required: false,
      detail: !kvmPresent ? "/dev/kvm absent" : probe.kvmBoots ? "a VM boots under KVM" : `present but unusable: ${probe.reason}`,
    });
    if (probe.accel === "tcg") {
      const tcg = await probeBoot("tcg", { qemu: q, kernel: q.kernel, initrd: q.initrd, timeoutMs: q.boot_timeout * 1000, logger: log });
      items.push({ name: "accelerator", ok: tcg.ok, required: true, detail: tcg.ok ? `tcg selected: a VM booted in ${tcg.ms} ms (tb-size ${q.tb_size} MiB)` : `tcg does not boot: ${tcg.detail}` });
    } else {
      items.push({ name: "accelerator", ok: true, required: true, detail: `${probe.accel} selected (${probe.reason})` });
    }
  } else {
    items.push({ name: "accelerator", ok: false, required: true, detail: "not probed: qemu or guest assets missing" });
  }

  items.push({ name: "cgroups", ok: true, required: false, detail: cgroupMode() });
  items.push(ksmItem());
  const tc = await checkTcMirred();
  items.push({ name: "tc mirred", ok: tc.ok, required: false, detail: tc.detail });
  const ctrd = await cmd("containerd", ["--version"]);
  items.push({ name: "containerd", ok: ctrd.ok, required: false, detail: ctrd.ok ? ctrd.out.split("\n")[0]! : "containerd not found (needed for the shim and CRI)" });
  return items;
}

export async function runCheck(opts: GlobalOptions & { json?: boolean }): Promise<number> {
  const items = await collectChecks(opts);
  const ok = items.filter((i) => i.required).every((i) => i.ok);
  if (opts.json) process.stdout.write(`${JSON.stringify({ ok, items }, null, 2)}\n`);
  else {
    for (const i of items) process.stdout.write(`${i.ok ? "ok  " : i.required ? "FAIL" : "warn"}  ${i.name.padEnd(14)} ${i.detail.replace(/\s*\n\s*/g, " | ")}\n`);
    process.stdout.write(ok ? "hako can run on this host\n" : "hako cannot run on this host: fix the FAIL items above\n");
  }
  return ok ? 0 : 1;
}

/** KSM is a node choice (density for ksmd's CPU): reported, never required. */
function ksmItem(): CheckItem {
  if (!ksmAvailable()) return { name: "ksm", ok: false, required: false, detail: `no ${KSM_DIR}: the kernel has no KSM; identical guest pages are not merged` };
  const { run, pagesToScan, sleepMillisecs } = readKsmSettings();
  const { pagesSharing } = readKsmStats();
  const scope = ksmMergeAnyAvailable() ? "guest RAM and the rest of QEMU's and the shims' memory" : "guest RAM only (whole-process merging needs Linux 6.4+)";
  return run === 1
    ? { name: "ksm", ok: true, required: false, detail: `running (${pagesToScan} pages per ${sleepMillisecs} ms) over ${scope}; ${((pagesSharing * 4096) / 2 ** 20).toFixed(0)} MiB saved now` }
    : { name: "ksm", ok: false, required: false, detail: `stopped: \`echo 1 > ${KSM_DIR}/run\` lets the VMs share identical pages, ${scope} (docs/kubernetes.md)` };
}
