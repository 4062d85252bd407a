// hako check / env / image build as a user runs them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeTempDir, removeDir } from "../helpers/bundle.js";
import { hako } from "../helpers/hako.js";

interface CheckItem {
  name: string;
  ok: boolean;
  required: boolean;
  detail: string;
}

test("hako check: KVM is probed by booting, TCG selected here, exit 0", async () => {
  const r = await hako(["check", "--json"], { timeoutMs: 120_000 });
  assert.equal(r.status, 0, r.stderr + r.stdout.toString());
  const out = JSON.parse(r.stdout.toString()) as { ok: boolean; items: CheckItem[] };
  assert.equal(out.ok, true);
  const item = (n: string): CheckItem => {
    const i = out.items.find((x) => x.name === n);
    assert.ok(i, `check item ${n}`);
    return i;
  };
  for (const n of ["qemu", "guest kernel", "guest rootfs", "virtio-9p", "virtio-serial", "accelerator"]) assert.ok(item(n).ok, `${n}: ${item(n).detail}`);
  if (existsSync("/dev/kvm")) {
    // These machines have a PVM /dev/kvm that cannot boot an ordinary guest.
    const kvm = item("kvm");
    if (!kvm.ok) {
      assert.match(kvm.detail, /present but unusable/);
      assert.match(item("accelerator").detail, /^tcg selected: a VM booted in \d+ ms/);
    }
  }
  assert.match(item("cgroups").detail, /unified|hybrid|legacy/);
  assert.equal(item("tc mirred").ok, true, item("tc mirred").detail);
  const text = await hako(["check"], { timeoutMs: 120_000 });
  assert.equal(text.status, 0);
  assert.match(text.stdout.toString(), /hako can run on this host/);
});

test("hako env shows the effective configuration and the guest image", async () => {
  const r = await hako(["env", "--json"]);
  assert.equal(r.status, 0, r.stderr);
  const env = JSON.parse(r.stdout.toString()) as { configFile: string; config: { hypervisor: { qemu: { kernel: string } } }; guest: { kernels: object } | null };
  assert.match(env.configFile, /configuration\.toml$/);
  assert.ok(existsSync(env.config.hypervisor.qemu.kernel));
  assert.ok(env.guest && "generic" in env.guest.kernels);
  const text = await hako(["env"]);
  assert.match(text.stdout.toString(), /^config\.hypervisor\.qemu\.machine_type = "microvm"$/m);
});

test("a bad configuration is a one-line error naming the key, exit 125", async () => {
  const dir = makeTempDir("cfg");
  try {
    const f = join(dir, "bad.toml");
    writeFileSync(f, "[hypervisor.qemu]\ndefault_memroy = 512\n");
    const r = await hako(["--config", f, "env"]);
    assert.equal(r.status, 125);
    assert.equal(r.stderr.trim(), "hako: unknown configuration key hypervisor.qemu.default_memroy (see docs/configuration.md for the keys hako knows)");
  } finally {
    removeDir(dir);
  }
});

test("hako image build is idempotent: an up-to-date image is not rebuilt", async () => {
  const r = await hako(["image", "build"], { timeoutMs: 300_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /up to date/);
});

test("the guest's node is on its own image, stripped: the initrd (a tmpfs root, all of it RAM) holds a link to it", async () => {
  const { execFileSync } = await import("node:child_process");
  const dir = makeTempDir("node-image");
  try {
    const guest = join(import.meta.dirname, "..", "..", "build", "share", "hako", "guest");
    const listing = execFileSync("sh", ["-c", `cpio -itv --quiet < '${join(guest, "hako-rootfs.initrd")}'`], { encoding: "utf8" });
    assert.match(listing, /^l\S+ .* usr\/bin\/node -> \/opt\/node\/node$/m, "usr/bin/node is a link into the node image");
    execFileSync("fsck.erofs", [`--extract=${join(dir, "x")}`, join(guest, "hako-node.erofs")], { stdio: "pipe" });
    const sections = execFileSync("readelf", ["-S", "-W", join(dir, "x", "node")], { encoding: "utf8" });
    assert.match(sections, /\.dynsym/, "dynamic symbols stay (node-pty links against them)");
    assert.doesNotMatch(sections, /\.symtab|\.debug_info/, "no symbol table or debug info");
  } finally {
    removeDir(dir);
  }
});

test("make install PREFIX=... installs hako, the shim, the guest assets and the default configuration", async () => {
  const { execFileSync } = await import("node:child_process");
  const prefix = makeTempDir("prefix");
  try {
    execFileSync("make", ["-s", "install", `PREFIX=${prefix}`], { cwd: join(import.meta.dirname, "..", ".."), stdio: "pipe" });
    for (const f of ["bin/hako", "bin/containerd-shim-hako-v2", "share/hako/configuration.toml", "share/hako/guest/manifest.json", "share/hako/guest/hako-rootfs.initrd", "share/hako/guest/hako-node.erofs", "lib/hako/hako-agent.js", "lib/hako/hako-ksm-exec"])
      assert.ok(existsSync(join(prefix, f)), f);
    const env = JSON.parse(execFileSync(join(prefix, "bin", "hako"), ["env", "--json"], { encoding: "utf8", env: { ...process.env, HAKO_CONFIG: "" } })) as { configFile: string; config: { hypervisor: { qemu: { kernel: string } } } };
    if (!existsSync("/etc/hako/configuration.toml")) assert.equal(env.configFile, join(prefix, "share", "hako", "configuration.toml"));
    assert.equal(env.config.hypervisor.qemu.kernel, join(prefix, "share", "hako", "guest", "vmlinux-generic"));
    assert.match(execFileSync(join(prefix, "bin", "containerd-shim-hako-v2"), ["-v"], { encoding: "utf8" }), /containerd-shim-hako-v2 version/);
  } finally {
    removeDir(prefix);
  }
});
