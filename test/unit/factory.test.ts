import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, type HakoConfig } from "../../src/runtime/config.js";
import { findTemplate, listTemplates, missingTemplateWarning, pruneStaleTemplates, templateKernelParams, templateKey, type TemplateManifest, type TemplateShape } from "../../src/runtime/factory.js";
import { RETRY_AFTER_FAILURE_MS, recentTemplateBuildFailure, recordTemplateBuildFailure, requestTemplateBuild, runningTemplateBuild, tryLockTemplateBuild } from "../../src/runtime/template-build.js";
import { createLogger } from "../../src/runtime/logger.js";

const shape: TemplateShape = { vcpus: 1, memoryMiB: 512, accel: "tcg", nics: 1 };

/** A configuration whose kernel is a file in `dir` and whose templates live under it. */
function fixtureConfig(dir: string): { cfg: HakoConfig; kernel: string } {
  const cfg = defaultConfig();
  const kernel = join(dir, "vmlinux");
  writeFileSync(kernel, "k");
  cfg.hypervisor.qemu.kernel = kernel;
  cfg.factory.template_path = join(dir, "templates");
  return { cfg, kernel };
}

/** Runs `body` with a fixture configuration in a temp dir, removed afterwards. */
function withFixture(body: (f: { cfg: HakoConfig; kernel: string }) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-factory-"));
  try {
    body(fixtureConfig(dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Writes a complete template directory (empty memory and state files, manifest) under `key`. */
function writeTemplate(cfg: HakoConfig, key: string, s: TemplateShape, configSource?: string): void {
  const tdir = join(cfg.factory.template_path, key);
  mkdirSync(tdir, { recursive: true });
  const m: TemplateManifest = { key, shape: s, created: "now", memoryFile: join(tdir, "memory"), stateFile: join(tdir, "state"), kernelParams: [], shareTag: "hakoShared", configSource };
  writeFileSync(m.memoryFile, "");
  writeFileSync(m.stateFile, "");
  writeFileSync(join(tdir, "manifest.json"), JSON.stringify(m));
}

test("a template is found only for its exact shape, with templating on, and never once its inputs changed", () => {
  withFixture(({ cfg, kernel }) => {
    cfg.factory.enable_template = true;
    const key = templateKey(cfg, shape);
    writeTemplate(cfg, key, shape);
    assert.equal(findTemplate(cfg, shape)?.key, key);
    assert.equal(findTemplate(cfg, { ...shape, nics: 0 }), undefined, "another NIC count is another template");
    assert.equal(findTemplate(cfg, { ...shape, memoryMiB: 768 }), undefined, "another size is another template");
    assert.equal(findTemplate({ ...cfg, factory: { ...cfg.factory, enable_template: false } }, shape), undefined, "templating off");
    // The guest kernel's command line is part of the key: a template booted with other options is not used.
    const q0 = cfg.hypervisor.qemu;
    for (const over of [{ tcg_norandmaps: !q0.tcg_norandmaps }, { tcg_mitigations_off: !q0.tcg_mitigations_off }, { kernel_params: "debug" }, { guest_lockdown: "none" as const }])
      assert.equal(findTemplate({ ...cfg, hypervisor: { ...cfg.hypervisor, qemu: { ...q0, ...over } } }, shape), undefined, JSON.stringify(over));
    // So are the template's own kernel parameters (its agent's node options): a template built with others is not used.
    assert.notEqual(templateKey(cfg, shape, [...templateKernelParams(shape), "hako.node_opts=--other"]), key, "the template agent's options are in the key");
    // A new kernel (other mtime) makes the template stale: not used, listed as invalid.
    utimesSync(kernel, new Date(2000, 1, 1), new Date(2000, 1, 1));
    assert.equal(findTemplate(cfg, shape), undefined);
    assert.deepEqual(listTemplates(cfg).map((t) => [t.key, t.valid]), [[key, false]]);
    // Such a start boots cold: worth a warning for the shapes `hako factory init` builds, not others.
    const q = cfg.hypervisor.qemu;
    const defaultShape: TemplateShape = { vcpus: q.default_vcpus, memoryMiB: q.default_memory, accel: "tcg", nics: 1 };
    assert.match(missingTemplateWarning(cfg, defaultShape) ?? "", /no usable template for .* booting cold/);
    assert.equal(missingTemplateWarning(cfg, { ...defaultShape, memoryMiB: q.default_memory + 256 }), undefined, "a size no template is built for");
    assert.equal(missingTemplateWarning(cfg, { ...defaultShape, nics: 2 }), undefined);
    assert.equal(missingTemplateWarning({ ...cfg, factory: { ...cfg.factory, enable_template: false } }, defaultShape), undefined, "templating off");
  });
});

test("factory init's pruning removes stale templates and dead builds, keeps valid ones and builds in progress", () => {
  withFixture(({ cfg }) => {
    const write = (key: string, s: TemplateShape): void => writeTemplate(cfg, key, s);
    const good = templateKey(cfg, shape);
    write(good, shape);
    write("0123456789abcdef", shape); // a key the current inputs no longer give
    mkdirSync(join(cfg.factory.template_path, "building")); // no manifest yet, fresh
    const dead = join(cfg.factory.template_path, "dead");
    mkdirSync(dead);
    const old = new Date(Date.now() - 3_600_000);
    utimesSync(dead, old, old);
    assert.deepEqual(pruneStaleTemplates(cfg).sort(), ["0123456789abcdef", "dead"]);
    assert.deepEqual(listTemplates(cfg).map((t) => [t.key, t.valid]), [[good, true]]);
    assert.deepEqual(pruneStaleTemplates(cfg), [], "nothing more to prune");
  });
});

test("a background rebuild prunes only its own configuration's stale templates; builds are judged by their builder's pid", () => {
  withFixture(({ cfg }) => {
    cfg.source = "/etc/hako/a.toml";
    const root = cfg.factory.template_path;
    writeTemplate(cfg, templateKey(cfg, shape), shape, cfg.source);
    writeTemplate(cfg, "1111111111111111", shape, cfg.source); // stale, built from this configuration
    writeTemplate(cfg, "2222222222222222", shape, "/etc/hako/b.toml"); // another handler's: not stale to it
    writeTemplate(cfg, "3333333333333333", shape); // built before manifests named their configuration
    // A build whose builder runs (this process), and one whose builder is gone (no such pid).
    mkdirSync(join(root, `4444444444444444.build-${process.pid}`));
    mkdirSync(join(root, "5555555555555555.build-2147483646"));
    writeFileSync(join(root, ".build.lock"), "2147483646");
    writeFileSync(join(root, ".build.log"), "");
    assert.deepEqual(pruneStaleTemplates(cfg, Date.now(), cfg.source).sort(), ["1111111111111111", "5555555555555555.build-2147483646"]);
    // factory init by hand prunes every template this configuration cannot use.
    assert.deepEqual(pruneStaleTemplates(cfg).sort(), ["2222222222222222", "3333333333333333"]);
    assert.deepEqual(readdirSync(root).sort(), [".build.lock", ".build.log", `4444444444444444.build-${process.pid}`, templateKey(cfg, shape)].sort());
  });
});

test("the template build lock: one holder at a time, a dead holder's lock taken over, released only by its holder", () => {
  withFixture(({ cfg }) => {
    const lockFile = join(cfg.factory.template_path, ".build.lock");
    assert.equal(runningTemplateBuild(cfg), undefined, "no lock, no build");
    // A lock whose pid is gone: taken over.
    mkdirSync(cfg.factory.template_path, { recursive: true });
    writeFileSync(lockFile, "2147483646");
    const lock = tryLockTemplateBuild(cfg);
    assert.ok(lock.held);
    assert.equal(readFileSync(lockFile, "utf8"), String(process.pid));
    // Held by a live `factory` process: this test runner's argv does not say factory, so a
    // live holder is simulated by a child whose command line does.
    lock.release();
    assert.ok(!existsSync(lockFile));
    const stale = tryLockTemplateBuild(cfg);
    const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 30000)", "factory"], { stdio: "ignore" });
    try {
      writeFileSync(lockFile, String(holder.pid));
      assert.equal(runningTemplateBuild(cfg), holder.pid);
      assert.deepEqual(tryLockTemplateBuild(cfg), { held: false, holder: holder.pid }, "a live build holds it");
      // A release by someone who does not hold it (any more) leaves it.
      assert.ok(stale.held);
      stale.release();
      assert.equal(readFileSync(lockFile, "utf8"), String(holder.pid));
    } finally {
      holder.kill("SIGKILL");
    }
  });
});

test("after a failed build, sandboxes start no other for a while; a success clears it", () => {
  withFixture(({ cfg }) => {
      const log = createLogger("test", { level: "silent" });
      recordTemplateBuildFailure(cfg, "building the VM template failed: QEMU exited");
      assert.match(recentTemplateBuildFailure(cfg) ?? "", /^\S+Z building the VM template failed: QEMU exited$/);
      const req = requestTemplateBuild(cfg, log);
      assert.equal(req.pid, undefined, "no build started");
      assert.match(req.started === false && "error" in req ? req.error : "", /the last build failed .*QEMU exited.*10 min after it, or run `hako factory init`/);
      assert.equal(recentTemplateBuildFailure(cfg, Date.now() + RETRY_AFTER_FAILURE_MS), undefined, "retried after the pause");
      recordTemplateBuildFailure(cfg, undefined);
      assert.equal(recentTemplateBuildFailure(cfg), undefined);
  });
});
