// Developer tool: boot a sandbox, run one container step by step, print what happens.
import { loadConfig } from "../../src/runtime/config.js";
import { createLogger } from "../../src/runtime/logger.js";
import { createHypervisor } from "../../src/hypervisor/index.js";
import { chooseAccel } from "../../src/runtime/accel.js";
import { Sandbox } from "../../src/runtime/sandbox.js";
import { loadBundle } from "../../src/runtime/oci-spec.js";
import { readFileSync } from "node:fs";

const [bundleDir, id] = process.argv.slice(2) as [string, string];
const cfg = loadConfig();
cfg.agent.debug = true;
const log = createLogger("debug", { level: "debug" });
const probe = await chooseAccel(cfg, log);
const sb = new Sandbox(id, { config: cfg, hypervisor: createHypervisor(cfg, log), accel: probe.accel, logger: log, bundle: bundleDir });
sb.claim();
try {
  await sb.start();
  const a = sb.requireAgent().agent;
  console.log("details", await a.getGuestDetails({}));
  const b = loadBundle(id, bundleDir);
  await sb.createContainer(id, b, false);
  console.log("start", await sb.startContainer(id));
  const w = await a.waitProcess({ containerId: id, execId: "" });
  console.log("wait", w);
  console.log("stdout", await a.readStdout({ containerId: id, execId: "", len: 65536 }, { timeoutMs: 3000 }).catch((e) => String(e)));
  console.log("stderr", await a.readStderr({ containerId: id, execId: "", len: 65536 }, { timeoutMs: 3000 }).catch((e) => String(e)));
  console.log("stdout2", await a.readStdout({ containerId: id, execId: "", len: 65536 }, { timeoutMs: 3000 }).catch((e) => String(e)));
} catch (e) {
  console.log("ERROR", e);
} finally {
  console.log(readFileSync(sb.consoleLog, "utf8").split("\n").slice(-40).join("\n"));
  await sb.destroy();
}
