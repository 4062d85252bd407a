// VM templates rebuilt by themselves ([factory] auto_rebuild): with templating
// on and no usable template, a sandbox boots cold and starts
// `hako factory init --missing` in the background; once that is done, the next
// sandbox is a clone. Real QEMU (TCG), real agent, the built `hako`.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeBundle, removeDir } from "../helpers/bundle.js";
import { HAKO, TEST_STATE_DIR, ensureTestConfig } from "../helpers/hako.js";
import { describeLeaks, findLeaks, hasLeaks } from "../helpers/leaks.js";
import { commandLine, processTable, runToEnd } from "../helpers/processes.js";
import { loadConfig, type HakoConfig } from "../../src/runtime/config.js";
import { listTemplates } from "../../src/runtime/factory.js";
import { buildLogPath, runningTemplateBuild } from "../../src/runtime/template-build.js";
import { pidAlive } from "../../src/runtime/state.js";

const CONFIG = join(TEST_STATE_DIR, "configuration-auto-rebuild.toml");
const TEMPLATES = join(TEST_STATE_DIR, "template-auto-rebuild");
const env = { ...process.env, HAKO_CONFIG: CONFIG };
const hako = (args: string[], timeoutMs = 120_000) => runToEnd(HAKO, args, { env, timeoutMs });
const bundles: string[] = [];

after(async () => {
  for (const b of bundles) removeDir(b);
  await hako(["factory", "destroy"]);
  rmSync(CONFIG, { force: true });
});

/** The suite's test configuration with templating on, its templates in a directory of their own. */
function writeConfig(): void {
  const text = readFileSync(ensureTestConfig(), "utf8")
    .replace(/enable_template = .*/, "enable_template = true")
    .replace(/template_path = ".*"/, `template_path = "${TEMPLATES}"`)
    .replace(/vm_cache_number = .*/, "vm_cache_number = 0");
  writeFileSync(CONFIG, text);
}

/** Waits for the background build `pid` (and any build holding the lock) to end. */
async function waitForBuild(cfg: HakoConfig, pid: number): Promise<void> {
  const deadline = Date.now() + 240_000;
  while (pidAlive(pid) || runningTemplateBuild(cfg) !== undefined) {
    if (Date.now() > deadline) throw new Error(`the template build (pid ${pid}) did not end in 240 s: ${readFileSync(buildLogPath(cfg), "utf8")}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** The phases `hako trace` has for a finished `hako run`. */
async function phases(id: string): Promise<string[]> {
  const r = await hako(["trace", "--json", id]);
  assert.equal(r.status, 0, r.stderr);
  return (JSON.parse(r.stdout.toString()) as { phases: Array<{ name: string }> }).phases.map((p) => p.name);
}

test("with no template, a run boots cold and has the templates built in the background; the next run is a clone", async () => {
  writeConfig();
  const cfg = loadConfig(CONFIG);
  await hako(["factory", "destroy"]);
  const echo = (word: string): string => {
    const b = makeBundle({ args: ["echo", word] });
    bundles.push(b);
    return b;
  };

  const first = `t${process.pid}-cold`;
  const cold = await hako(["run", "--bundle", echo("one"), first]);
  assert.equal(cold.status, 0, cold.stderr);
  assert.equal(cold.stdout.toString(), "one\n");
  const started = /no usable template for 1 vCPU, 512 MiB, 0 NIC.*booting cold; started a template build in the background \(pid (\d+)/.exec(cold.stderr);
  assert.ok(started, `the cold run says why and that a build started: ${cold.stderr}`);
  assert.ok((await phases(first)).includes("guest_kernel_booted"), "the first run booted its kernel");

  // The build: one `hako factory init --missing`, both templates (with and without a NIC).
  await waitForBuild(cfg, Number(started[1]));
  const log = readFileSync(buildLogPath(cfg), "utf8");
  assert.equal(log.match(/built in \d+ ms/g)?.length, 2, `two templates built: ${log}`);
  const valid = listTemplates(cfg).filter((t) => t.valid);
  assert.deepEqual(valid.map((t) => t.shape.nics).sort(), [0, 1]);
  assert.ok(valid.every((t) => t.configSource === CONFIG), "each names the configuration it was built from");

  const second = `t${process.pid}-clone`;
  const clone = await hako(["run", "--bundle", echo("two"), second]);
  assert.equal(clone.status, 0, clone.stderr);
  assert.equal(clone.stdout.toString(), "two\n");
  assert.doesNotMatch(clone.stderr, /booting cold|template build/, "no warning: a template was found");
  assert.ok(!(await phases(second)).includes("guest_kernel_booted"), "the second run restored a clone (no kernel boot)");

  const l = findLeaks(TEST_STATE_DIR);
  assert.ok(!hasLeaks(l), `leaked: ${describeLeaks(l)}`);
});

test("a stale template is rebuilt in the background and replaced; templates of another configuration are left alone", async () => {
  writeConfig();
  const before = listTemplates(loadConfig(CONFIG)).filter((t) => t.valid);
  assert.equal(before.length, 2, "the first test left two valid templates");
  // A new tb_size makes both stale for this configuration (the key covers QEMU's TCG settings).
  writeFileSync(CONFIG, readFileSync(CONFIG, "utf8").replace(/^tb_size = \d+/m, "tb_size = 48"));
  const cfg = loadConfig(CONFIG);
  assert.equal(listTemplates(cfg).filter((t) => t.valid).length, 0, "stale now");
  // A template of another configuration (another runtime handler) sharing the directory: not
  // this configuration's to remove, though it cannot use it.
  const foreignKey = "f0f0f0f0f0f0f0f0";
  mkdirSync(join(TEMPLATES, foreignKey));
  writeFileSync(join(TEMPLATES, foreignKey, "manifest.json"), JSON.stringify({ ...before[0], key: foreignKey, configSource: "/etc/hako/another-handler.toml" }));

  const id = `t${process.pid}-stale`;
  const b = makeBundle({ args: ["true"] });
  bundles.push(b);
  const r = await hako(["run", "--bundle", b, id]);
  assert.equal(r.status, 0, r.stderr);
  const started = /booting cold; (?:started a template build|a template build runs) in the background \(pid (\d+)/.exec(r.stderr);
  assert.ok(started, r.stderr);
  await waitForBuild(cfg, Number(started[1]));
  const after = listTemplates(cfg);
  assert.deepEqual(after.filter((t) => t.valid).map((t) => t.shape.nics).sort(), [0, 1], "rebuilt");
  const keys = after.map((t) => t.key);
  for (const t of before) assert.ok(!keys.includes(t.key), `the stale template ${t.key} was removed`);
  assert.ok(keys.includes(foreignKey), "the other configuration's template is still there");
  const l = findLeaks(TEST_STATE_DIR);
  assert.ok(!hasLeaks(l), `leaked: ${describeLeaks(l)}`);
});

test("SIGTERM to a template build stops its VM and removes the unfinished template; the ones it was replacing stay", async () => {
  const cfg = loadConfig(CONFIG);
  const before = listTemplates(cfg).filter((t) => t.valid).map((t) => t.key).sort();
  assert.equal(before.length, 2, "the tests before left two valid templates");
  const child = spawn(HAKO, ["factory", "init"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  // Its template VM is up (booting or warming up) in a build directory.
  const deadline = Date.now() + 60_000;
  const buildVm = (): boolean => processTable().some((p) => p.comm.startsWith("qemu") && commandLine(p).includes(`${TEMPLATES}/`) && commandLine(p).includes(".build-"));
  while (!buildVm()) {
    assert.ok(Date.now() < deadline, "the template VM did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 1500)); // mid-boot: the build waits for its agent
  child.kill("SIGTERM");
  assert.equal(await exited, 125, stderr);
  assert.match(stderr, /template build interrupted by SIGTERM: its VM was stopped and the unfinished template removed/);
  const l = findLeaks(TEST_STATE_DIR);
  assert.ok(!hasLeaks(l), `leaked: ${describeLeaks(l)}`);
  assert.deepEqual(readdirSync(TEMPLATES).filter((d) => d.includes(".build-") || d === ".build.lock" || d === ".build.failed"), [], "no build directory, lock or failure record left");
  assert.deepEqual(listTemplates(cfg).filter((t) => t.valid).map((t) => t.key).sort(), before, "the templates it was replacing are still valid");
});
