import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, loadConfig, parseConfig } from "../../src/runtime/config.js";
import { ConfigError } from "../../src/runtime/errors.js";
import { dataDir } from "../../src/runtime/paths.js";

test("an empty file gives the documented defaults, asset paths under the data dir", () => {
  const c = parseConfig("", "x.toml");
  const d = defaultConfig();
  assert.equal(c.hypervisor.qemu.machine_type, "microvm");
  assert.equal(c.hypervisor.qemu.default_memory, d.hypervisor.qemu.default_memory);
  assert.equal(c.hypervisor.qemu.kernel, join(dataDir(), "guest", "vmlinux-generic"));
  assert.equal(c.hypervisor.qemu.node_image, join(dataDir(), "guest", "hako-node.erofs"));
  assert.equal(parseConfig('[hypervisor.qemu]\nnode_image = ""\n', "y").hypervisor.qemu.node_image, "", "empty: node is in the initrd");
  assert.equal(c.runtime.state_dir, "/run/hako");
  assert.equal(c.source, "x.toml");
});

test("keys override defaults and absolute paths stay as given", () => {
  const c = parseConfig('[hypervisor.qemu]\nkernel = "/k/vmlinux"\ndefault_vcpus = 2\naccel = "tcg"\n[agent]\ndebug = true\n[runtime]\nstate_dir = "/tmp/s"\n', "f");
  assert.equal(c.hypervisor.qemu.kernel, "/k/vmlinux");
  assert.equal(c.hypervisor.qemu.default_vcpus, 2);
  assert.equal(c.hypervisor.qemu.accel, "tcg");
  assert.equal(c.agent.debug, true);
  assert.equal(c.runtime.state_dir, "/tmp/s");
});

test("unknown sections and keys are errors that name the key", () => {
  assert.throws(() => parseConfig("[hypervisor.qemu]\nkernal = \"x\"\n", "f"), (e: Error) => e instanceof ConfigError && /hypervisor\.qemu\.kernal/.test(e.message));
  assert.throws(() => parseConfig("[hypervisor.firecracker]\npath = \"x\"\n", "f"), /hypervisor\.firecracker/);
  assert.throws(() => parseConfig("[bogus]\na = 1\n", "f"), /unknown configuration key bogus/);
  assert.throws(() => parseConfig("[agent]\nverbose = true\n", "f"), /agent\.verbose/);
});

test("bad values are errors that name the key and the problem", () => {
  assert.throws(() => parseConfig("[hypervisor.qemu]\ndefault_memory = \"lots\"\n", "f"), /hypervisor\.qemu\.default_memory must be an integer/);
  assert.throws(() => parseConfig("[hypervisor.qemu]\ndefault_vcpus = 0\n", "f"), /hypervisor\.qemu\.default_vcpus = 0 is out of range/);
  assert.throws(() => parseConfig("[hypervisor.qemu]\naccel = \"xen\"\n", "f"), /hypervisor\.qemu\.accel = "xen" is not one of auto, kvm, tcg/);
  assert.throws(() => parseConfig("[agent]\ndebug = \"yes\"\n", "f"), /agent\.debug must be true or false/);
  assert.throws(() => parseConfig("[hypervisor.qemu]\nrootfs_type = \"erofs\"\n", "f"), /needs hypervisor\.qemu\.image/);
  assert.throws(() => parseConfig("[agent\n", "f"), /cannot parse f/);
});

test("load order: explicit path, then HAKO_CONFIG; a missing explicit file is an error", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-config-"));
  const saved = process.env.HAKO_CONFIG;
  try {
    const a = join(dir, "a.toml");
    const b = join(dir, "b.toml");
    writeFileSync(a, "[hypervisor.qemu]\ndefault_vcpus = 3\n");
    writeFileSync(b, "[hypervisor.qemu]\ndefault_vcpus = 4\n");
    process.env.HAKO_CONFIG = b;
    assert.equal(loadConfig(a).hypervisor.qemu.default_vcpus, 3);
    assert.equal(loadConfig().hypervisor.qemu.default_vcpus, 4);
    assert.equal(loadConfig().source, b);
    assert.throws(() => loadConfig(join(dir, "missing.toml")), /does not exist/);
  } finally {
    if (saved === undefined) delete process.env.HAKO_CONFIG;
    else process.env.HAKO_CONFIG = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the shipped config/configuration.toml parses and matches the built-in defaults", async () => {
  const { readFileSync } = await import("node:fs");
  const text = readFileSync(join(import.meta.dirname, "..", "..", "config", "configuration.toml"), "utf8");
  const c = parseConfig(text, "shipped");
  const d = parseConfig("", "");
  assert.deepEqual({ ...c, source: "" }, { ...d, source: "" });
});
