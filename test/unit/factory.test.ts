import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig, type HakoConfig } from "../../src/runtime/config.js";
import { findTemplate, listTemplates, missingTemplateWarning, pruneStaleTemplates, templateKey, type TemplateManifest, type TemplateShape } from "../../src/runtime/factory.js";

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

/** Writes a complete template directory (empty memory and state files, manifest) under `key`. */
function writeTemplate(cfg: HakoConfig, key: string, s: TemplateShape): void {
  const tdir = join(cfg.factory.template_path, key);
  mkdirSync(tdir, { recursive: true });
  const m: TemplateManifest = { key, shape: s, created: "now", memoryFile: join(tdir, "memory"), stateFile: join(tdir, "state"), kernelParams: [], shareTag: "hakoShared" };
  writeFileSync(m.memoryFile, "");
  writeFileSync(m.stateFile, "");
  writeFileSync(join(tdir, "manifest.json"), JSON.stringify(m));
}

test("a template is found only for its exact shape, with templating on, and never once its inputs changed", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-factory-"));
  try {
    const { cfg, kernel } = fixtureConfig(dir);
    cfg.factory.enable_template = true;
    const key = templateKey(cfg, shape);
    writeTemplate(cfg, key, shape);
    assert.equal(findTemplate(cfg, shape)?.key, key);
    assert.equal(findTemplate(cfg, { ...shape, nics: 0 }), undefined, "another NIC count is another template");
    assert.equal(findTemplate(cfg, { ...shape, memoryMiB: 768 }), undefined, "another size is another template");
    assert.equal(findTemplate({ ...cfg, factory: { ...cfg.factory, enable_template: false } }, shape), undefined, "templating off");
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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("factory init's pruning removes stale templates and dead builds, keeps valid ones and builds in progress", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-factory-"));
  try {
    const { cfg } = fixtureConfig(dir);
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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
