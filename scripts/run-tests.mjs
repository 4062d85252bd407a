// Runs the whole suite: unit tests (in parallel), then integration tests
// (one file at a time: VM boots under TCG need the cores), then checks that
// nothing leaked: no QEMU process, mount, sandbox state or temp dir.
import { spawnSync } from "node:child_process";
import { readdirSync, existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const files = (d) => (existsSync(join(root, d)) ? readdirSync(join(root, d)).filter((f) => f.endsWith(".test.ts")).sort().map((f) => join(d, f)) : []);
const only = process.argv.slice(2);
const unit = only.length ? only.filter((f) => f.includes("/unit/")) : files("test/unit");
const integration = only.length ? only.filter((f) => !f.includes("/unit/")) : files("test/integration");

const netnsDir = "/var/run/netns";
const netnsBefore = existsSync(netnsDir) ? readdirSync(netnsDir).join(",") : "";

let failed = false;
const run = (list, concurrency) => {
  if (list.length === 0) return;
  // A hung test fails after 5 minutes instead of hanging CI.
  const r = spawnSync(process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", `--test-concurrency=${concurrency}`, "--test-timeout=300000", ...list], {
    cwd: root,
    stdio: "inherit",
    env: { ...process.env, HAKO_TEST_STATE_DIR: process.env.HAKO_TEST_STATE_DIR ?? "/run/hako-test" },
  });
  if (r.status !== 0) failed = true;
};
run(unit, 2);
run(integration, 1);
// The CRI suite again with every pod cloned from a VM template (docs/templating.md).
const criSuite = "test/integration/cri.test.ts";
// And a third time with the VM cache running: pods take warm clones.
if (integration.includes(criSuite) && process.env.HAKO_TEST_TEMPLATE !== "0") {
  for (const [mode, what] of [["1", "templated"], ["cache", "VM cache"]]) {
    process.stdout.write(`\n# CRI suite, ${what} mode (HAKO_TEST_TEMPLATE=${mode})\n`);
    process.env.HAKO_TEST_TEMPLATE = mode;
    run([criSuite], 1);
  }
  delete process.env.HAKO_TEST_TEMPLATE;
}

const leaks = spawnSync(process.execPath, ["--import", "tsx", join(root, "test", "helpers", "leak-report.ts")], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, HAKO_TEST_NETNS_BEFORE: netnsBefore },
});
if (leaks.status !== 0) failed = true;
process.exit(failed ? 1 : 0);
