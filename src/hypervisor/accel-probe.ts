// Which accelerator to run VMs with. A /dev/kvm that opens is not enough
// (nested PVM hosts create VMs that never boot an ordinary guest), so with
// accel = "auto" hako boots a probe VM under KVM: the guest init prints
// HAKO_PROBE_OK on the serial console when the kernel command line has
// hako.probe=1. The answer is cached per host boot, QEMU, guest files and
// probe command line.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { Code } from "../protocols/ttrpc/status.js";
import type { QemuConfig } from "../runtime/config.js";
import { HypervisorError } from "../runtime/errors.js";
import type { Logger } from "../runtime/logger.js";
import type { Accelerator } from "./hypervisor.js";
import { kernelWantsAcpi } from "./guest-kernel.js";
import { configGuestOptions, kernelCommandLine, machineArgs, machineTypeOf } from "./qemu/command-line.js";
import { TailBuffer } from "./qemu/qemu-hypervisor.js";
import { fileStamp } from "../runtime/paths.js";

export const KVM_DEVICE = "/dev/kvm";
export const PROBE_MARKER = "HAKO_PROBE_OK";
export const PROBE_PARAM = "hako.probe=1";
const BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id";

export interface AccelProbeResult {
  accel: Accelerator;
  kvmDevicePresent: boolean;
  kvmBoots: boolean;
  reason: string;
  bootId: string;
  probedAt: string;
  kvmProbeMs?: number;
  /** Set when the result came from the cache file rather than a probe. */
  cached?: boolean;
}

export interface ProbeBootResult {
  ok: boolean;
  /** Wall time from QEMU spawn to the marker (or to failure/timeout). */
  ms: number;
  detail: string;
}

export interface ProbeBootOptions {
  qemu: QemuConfig;
  kernel: string;
  initrd: string;
  timeoutMs: number;
  logger?: Logger;
  /** Host TSC kHz for microvm under TCG (default: /proc/cpuinfo). */
  hostTscKhz?: number;
}

export interface ProbeAcceleratorOptions {
  qemu: QemuConfig;
  kernel: string;
  initrd: string;
  /** e.g. /run/hako/accel-probe.json */
  cacheFile: string;
  /** Default: qemu.accel_probe_timeout seconds. */
  timeoutMs?: number;
  logger?: Logger;
  /** For tests: the KVM device path (default /dev/kvm). */
  kvmDevice?: string;
}

interface CacheKey {
  bootId: string;
  /** probeIdentity(): the probe's exact argv and the files it boots (paths included), as they are now. */
  boot: string;
}

/**
 * What a cached probe answer depends on besides the host's boot: the KVM
 * probe's argv (machine, CPU, the guest kernel command line with its
 * lockdown) and the QEMU binary, kernel and initrd files it boots, as they
 * are now. Any change probes again.
 */
export function probeIdentity(opts: Pick<ProbeAcceleratorOptions, "qemu" | "kernel" | "initrd">): string {
  const argv = buildProbeArgs("kvm", { qemu: opts.qemu, kernel: opts.kernel, initrd: opts.initrd });
  const files = [opts.qemu.path, opts.kernel, opts.initrd].map(fileStamp);
  return createHash("sha256").update(JSON.stringify([argv, files])).digest("hex").slice(0, 16);
}

interface CacheFile {
  key: CacheKey;
  result: AccelProbeResult;
}

/** The QEMU argv for a probe VM: serial on stdout, 256 MiB, no other devices. */
export function buildProbeArgs(accel: Accelerator, opts: Pick<ProbeBootOptions, "qemu" | "kernel" | "initrd" | "hostTscKhz">): string[] {
  const machine = machineTypeOf(opts.qemu);
  // The guest options real VMs boot with, so that a probe (and the benchmark's floor, which boots this argv) times the same kernel work.
  const cmdline = kernelCommandLine({
    accel,
    machine,
    hostTscKhz: opts.hostTscKhz,
    extraParams: [PROBE_PARAM],
    ...configGuestOptions(opts.qemu),
  });
  return [
    ...machineArgs(machine, machine === "q35" ? "pci" : "mmio", accel, opts.qemu, kernelWantsAcpi(opts.kernel)),
    "-m", "256M",
    "-smp", "1",
    "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
    "-serial", "stdio",
    "-kernel", opts.kernel,
    "-initrd", opts.initrd,
    "-append", cmdline.join(" "),
  ];
}

function tailLines(s: string, n: number): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/\r/g, "").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
  return clean.trimEnd().split("\n").slice(-n).join("\n");
}

/**
 * Boots the guest kernel + initrd with hako.probe=1 under `accel` and waits for
 * HAKO_PROBE_OK on the serial console. The probe VM is killed by pid when done
 * or on timeout.
 */
export function probeBoot(accel: Accelerator, opts: ProbeBootOptions): Promise<ProbeBootResult> {
  const t0 = Date.now();
  let args: string[];
  try {
    args = buildProbeArgs(accel, opts);
  } catch (err) {
    return Promise.resolve({ ok: false, ms: 0, detail: (err as Error).message });
  }
  const log = opts.logger?.child({ probe: accel });
  return new Promise<ProbeBootResult>((resolve) => {
    // A failing KVM probe typically ends in SIGABRT: no core dumps for that. `exec` keeps the pid.
    const child = spawn("/bin/sh", ["-c", 'ulimit -c 0; exec "$0" "$@"', opts.qemu.path, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    const consoleOut = new TailBuffer(16 * 1024);
    const stderr = new TailBuffer(16 * 1024);
    let scan = "";
    let result: ProbeBootResult | undefined;
    let exited = child.pid === undefined;

    const finish = (ok: boolean, detail: string): void => {
      if (result) return;
      result = { ok, ms: Date.now() - t0, detail };
      clearTimeout(timer);
      log?.debug({ ...result, pid: child.pid }, "probe boot finished");
      if (!exited && child.pid !== undefined) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          /* already gone */
        }
      } else {
        resolve(result);
      }
    };
    const diag = (): string => {
      const e = tailLines(stderr.text(), 5);
      const c = tailLines(consoleOut.text(), 5);
      return `${e ? `; QEMU stderr: ${e}` : ""}${c ? `; console tail: ${c}` : ""}`;
    };

    const timer = setTimeout(() => finish(false, `no ${PROBE_MARKER} within ${opts.timeoutMs} ms under ${accel}${diag()}`), opts.timeoutMs);

    child.on("error", (err) => {
      if (child.pid === undefined) {
        exited = true;
        finish(false, `cannot run QEMU ${opts.qemu.path}: ${err.message}`);
      }
    });
    child.stdout?.on("data", (b: Buffer) => {
      consoleOut.push(b);
      scan = (scan + b.toString("latin1")).slice(-4096);
      if (scan.includes(PROBE_MARKER)) finish(true, `${PROBE_MARKER} after ${Date.now() - t0} ms under ${accel}`);
    });
    child.stderr?.on("data", (b: Buffer) => stderr.push(b));
    child.once("close", (code, signal) => {
      exited = true;
      if (result) resolve(result);
      else {
        finish(false, `QEMU exited (${signal ? `killed by ${signal}` : `exit code ${code}`}) before ${PROBE_MARKER} under ${accel}${diag()}`);
      }
    });
  });
}

function readBootId(): string {
  try {
    return readFileSync(BOOT_ID_FILE, "utf8").trim();
  } catch {
    return "";
  }
}

function sameKey(a: CacheKey, b: CacheKey): boolean {
  return a.bootId === b.bootId && a.boot === b.boot;
}

function readCache(file: string, key: CacheKey): AccelProbeResult | undefined {
  if (key.bootId === "") return undefined;
  try {
    const data = JSON.parse(readFileSync(file, "utf8")) as Partial<CacheFile>;
    if (!data.key || !data.result || !sameKey(data.key, key)) return undefined;
    if (data.result.accel !== "kvm" && data.result.accel !== "tcg") return undefined;
    return { ...data.result, cached: true };
  } catch {
    return undefined;
  }
}

function writeCache(file: string, key: CacheKey, result: AccelProbeResult, log?: Logger): void {
  if (key.bootId === "") return;
  try {
    mkdirSync(dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    const body: CacheFile = { key, result: { ...result, cached: undefined } };
    writeFileSync(tmp, JSON.stringify(body, null, 2) + "\n");
    renameSync(tmp, file);
  } catch (err) {
    log?.warn({ err: (err as Error).message, file }, "cannot write the accelerator probe cache");
  }
}

const inflight = new Map<string, Promise<AccelProbeResult>>();

/** Decides the accelerator: configured kvm/tcg as is; "auto" probes KVM by booting (cached per host boot). */
export async function probeAccelerator(opts: ProbeAcceleratorOptions): Promise<AccelProbeResult> {
  const kvmDevice = opts.kvmDevice ?? KVM_DEVICE;
  const kvmDevicePresent = existsSync(kvmDevice);
  const bootId = readBootId();
  const now = (): string => new Date().toISOString();

  if (opts.qemu.accel === "kvm" || opts.qemu.accel === "tcg") {
    return { accel: opts.qemu.accel, kvmDevicePresent, kvmBoots: opts.qemu.accel === "kvm", reason: "configured", bootId, probedAt: now() };
  }
  if (!kvmDevicePresent) {
    return { accel: "tcg", kvmDevicePresent, kvmBoots: false, reason: `${kvmDevice} is absent`, bootId, probedAt: now() };
  }
  try {
    accessSync(kvmDevice, constants.R_OK | constants.W_OK);
  } catch (err) {
    return {
      accel: "tcg",
      kvmDevicePresent,
      kvmBoots: false,
      reason: `${kvmDevice} is not accessible (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      bootId,
      probedAt: now(),
    };
  }

  const key: CacheKey = { bootId, boot: probeIdentity(opts) };
  const cached = readCache(opts.cacheFile, key);
  if (cached) return cached;

  const mapKey = JSON.stringify([opts.cacheFile, key]);
  let p = inflight.get(mapKey);
  if (!p) {
    p = runKvmProbe(opts, key, kvmDevice).finally(() => inflight.delete(mapKey));
    inflight.set(mapKey, p);
  }
  return p;
}

async function runKvmProbe(opts: ProbeAcceleratorOptions, key: CacheKey, kvmDevice: string): Promise<AccelProbeResult> {
  for (const [what, path] of [
    ["guest kernel", opts.kernel],
    ["guest initrd", opts.initrd],
  ] as const) {
    if (!existsSync(path)) {
      throw new HypervisorError("accel-probe", `cannot probe KVM: the ${what} ${path} does not exist`, {
        code: Code.FAILED_PRECONDITION,
        hint: "install the guest assets (hako image build) or set hypervisor.qemu.accel to \"tcg\" or \"kvm\"",
      });
    }
  }
  const timeoutMs = opts.timeoutMs ?? opts.qemu.accel_probe_timeout * 1000;
  const boot = await probeBoot("kvm", { qemu: opts.qemu, kernel: opts.kernel, initrd: opts.initrd, timeoutMs, logger: opts.logger });
  const result: AccelProbeResult = {
    accel: boot.ok ? "kvm" : "tcg",
    kvmDevicePresent: true,
    kvmBoots: boot.ok,
    reason: boot.ok ? `a probe VM booted under KVM (${boot.detail})` : `${kvmDevice} exists but a probe VM does not boot under KVM: ${boot.detail}`,
    bootId: key.bootId,
    probedAt: new Date().toISOString(),
    kvmProbeMs: boot.ms,
  };
  opts.logger?.info({ accel: result.accel, kvmProbeMs: boot.ms }, "accelerator probed");
  writeCache(opts.cacheFile, key, result, opts.logger);
  return result;
}
