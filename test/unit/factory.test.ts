import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultConfig } from "../../src/runtime/config.js";
import { findTemplate, listTemplates, templateKey, type TemplateManifest, type TemplateShape } from "../../src/runtime/factory.js";

const shape: TemplateShape = { vcpus: 1, memoryMiB: 512, accel: "tcg", nics: 1 };

test("a template is found only for its exact shape, with templating on, and never once its inputs changed", () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-factory-"));
  try {
    const cfg = defaultConfig();
    const kernel = join(dir, "vmlinux");
    writeFileSync(kernel, "k");
    cfg.hypervisor.qemu.kernel = kernel;
    cfg.factory.template_path = join(dir, "templates");
    cfg.factory.enable_template = true;
    const key = templateKey(cfg, shape);
    const tdir = join(cfg.factory.template_path, key);
    mkdirSync(tdir, { recursive: true });
    const m: TemplateManifest = { key, shape, created: "now", memoryFile: join(tdir, "memory"), stateFile: join(tdir, "state"), kernelParams: [], shareTag: "hakoShared" };
    writeFileSync(m.memoryFile, "");
    writeFileSync(m.stateFile, "");
    writeFileSync(join(tdir, "manifest.json"), JSON.stringify(m));
    assert.equal(findTemplate(cfg, shape)?.key, key);
    assert.equal(findTemplate(cfg, { ...shape, nics: 0 }), undefined, "another NIC count is another template");
    assert.equal(findTemplate(cfg, { ...shape, memoryMiB: 768 }), undefined, "another size is another template");
    assert.equal(findTemplate({ ...cfg, factory: { ...cfg.factory, enable_template: false } }, shape), undefined, "templating off");
    // A new kernel (other mtime) makes the template stale: not used, listed as invalid.
    utimesSync(kernel, new Date(2000, 1, 1), new Date(2000, 1, 1));
    assert.equal(findTemplate(cfg, shape), undefined);
    assert.deepEqual(listTemplates(cfg).map((t) => [t.key, t.valid]), [[key, false]]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
