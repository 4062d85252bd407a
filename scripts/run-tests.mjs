// Runs the whole suite: unit tests (in parallel), then integration tests
// (one file at a time: VM boots under TCG need the cores), then checks that
// nothing leaked: no QEMU process, mount, sandbox state or temp dir.
import { spawn, spawnSync } from "node:child_process";
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
// The node:test spec reporter ends each run with a "failing tests:" section
// (each failure with its error and stack). CI logs are often read from the
// end, so those sections are printed again after the leak check.
const failureReports = [];
const run = async (list, concurrency, label) => {
  if (list.length === 0) return;
  // A hung test fails after 5 minutes instead of hanging CI.
  const child = spawn(process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", `--test-concurrency=${concurrency}`, "--test-timeout=300000", ...list], {
    cwd: root,
    stdio: ["inherit", "pipe", "inherit"],
    env: { ...process.env, HAKO_TEST_STATE_DIR: process.env.HAKO_TEST_STATE_DIR ?? "/run/hako-test" },
  });
  let out = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk) => {
    process.stdout.write(chunk);
    out += chunk;
  });
  const status = await new Promise((resolve) => child.on("close", (code) => resolve(code)));
  if (status !== 0) {
    failed = true;
    const at = out.lastIndexOf("failing tests:");
    // Without stack frames: the test's name and its error are what the end of a log needs.
    const report = at >= 0 ? out.slice(at).split("\n").filter((l) => !/^\s+at /.test(l) && l.trim() !== "").slice(0, 60).join("\n") : `exit status ${status}, no failing tests section`;
    failureReports.push(`## ${label}\n${report}`);
  }
};
await run(unit, 2, "unit tests");
await run(integration, 1, "integration tests");
// The CRI suite again with every pod cloned from a VM template (docs/templating.md).
const criSuite = "test/integration/cri.test.ts";
// And a third time with the VM cache running: pods take warm clones.
if (integration.includes(criSuite) && process.env.HAKO_TEST_TEMPLATE !== "0") {
  for (const [mode, what] of [["1", "templated"], ["cache", "VM cache"]]) {
    process.stdout.write(`\n# CRI suite, ${what} mode (HAKO_TEST_TEMPLATE=${mode})\n`);
    process.env.HAKO_TEST_TEMPLATE = mode;
    await run([criSuite], 1, `CRI suite, ${what} mode`);
  }
  delete process.env.HAKO_TEST_TEMPLATE;
}

const leaks = spawnSync(process.execPath, ["--import", "tsx", join(root, "test", "helpers", "leak-report.ts")], {
  cwd: root,
  stdio: "inherit",
  env: { ...process.env, HAKO_TEST_NETNS_BEFORE: netnsBefore },
});
if (leaks.status !== 0) failed = true;
if (failureReports.length > 0) process.stdout.write(`\n# failures of this run, again\n${failureReports.join("\n\n")}\n`);
process.exit(failed ? 1 : 0);
