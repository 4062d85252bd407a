// Test fixtures: OCI bundles with a static busybox root filesystem.
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TMP_PREFIX = "hako-test-";
const BUSYBOX = "/bin/busybox";

export function makeTempDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `${TMP_PREFIX}${tag}-`));
}

export function busyboxRootfs(dir: string): void {
  mkdirSync(join(dir, "bin"), { recursive: true });
  copyFileSync(BUSYBOX, join(dir, "bin", "busybox"));
  chmodSync(join(dir, "bin", "busybox"), 0o755);
  const applets = execFileSync(BUSYBOX, ["--list"], { encoding: "utf8" }).split("\n").filter(Boolean);
  for (const a of applets) {
    if (a === "busybox") continue;
    try {
      symlinkSync("busybox", join(dir, "bin", a));
    } catch {
      /* duplicate */
    }
  }
  for (const d of ["proc", "sys", "dev", "etc", "tmp", "root", "usr/bin", "sbin"]) mkdirSync(join(dir, d), { recursive: true });
  writeFileSync(join(dir, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  writeFileSync(join(dir, "etc", "group"), "root:x:0:\n");
}

export interface BundleOptions {
  args: string[];
  terminal?: boolean;
  env?: string[];
  cwd?: string;
}

export function ociConfig(o: BundleOptions): object {
  return {
    ociVersion: "1.0.2",
    process: {
      terminal: o.terminal ?? false,
      user: { uid: 0, gid: 0 },
      args: o.args,
      env: o.env ?? ["PATH=/bin:/usr/bin:/sbin", "TERM=xterm"],
      cwd: o.cwd ?? "/",
      capabilities: {
        bounding: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE"],
        effective: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE"],
        permitted: ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE"],
      },
      noNewPrivileges: true,
    },
    root: { path: "rootfs", readonly: false },
    hostname: "hako",
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      { destination: "/dev/pts", type: "devpts", source: "devpts", options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
    ],
    linux: {
      namespaces: [{ type: "pid" }, { type: "network" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }],
      maskedPaths: ["/proc/kcore", "/sys/firmware"],
      readonlyPaths: ["/proc/sys", "/proc/sysrq-trigger"],
    },
  };
}

/** A bundle dir with rootfs/ (busybox) and config.json. */
export function makeBundle(o: BundleOptions): string {
  const dir = makeTempDir("bundle");
  busyboxRootfs(join(dir, "rootfs"));
  writeConfig(dir, o);
  return dir;
}

export function writeConfig(dir: string, o: BundleOptions): void {
  writeFileSync(join(dir, "config.json"), JSON.stringify(ociConfig(o), null, 2));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
