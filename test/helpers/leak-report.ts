// Final suite check: exits 1 if the run left anything behind.
import { describeLeaks, findLeaks, hasLeaks } from "./leaks.js";
import { existsSync } from "node:fs";
import { TEST_STATE_DIR } from "./hako.js";
import { CNI_BRIDGE } from "./cri-containerd.js";

// The runner lists the netns that existed before the suite (HAKO_TEST_NETNS_BEFORE).
const before = process.env.HAKO_TEST_NETNS_BEFORE;
const l = findLeaks(TEST_STATE_DIR, before === undefined ? undefined : before.split(",").filter(Boolean));
// The CRI tests' CNI bridge (test/helpers/cri-containerd.ts) must be gone too.
const bridge = existsSync(`/sys/class/net/${CNI_BRIDGE}`) ? `; bridge ${CNI_BRIDGE}` : "";
if (hasLeaks(l) || l.tempDirs.length > 0 || bridge) {
  process.stderr.write(`LEAK CHECK FAILED: ${describeLeaks(l)}${bridge}\n`);
  process.exit(1);
}
process.stdout.write("leak check: no QEMU or shim process, mount, sandbox state, netns, tap, bridge or temp dir left\n");
