// Final suite check: exits 1 if the run left anything behind.
import { describeLeaks, findLeaks, hasLeaks } from "./leaks.js";
import { TEST_STATE_DIR } from "./hako.js";

const l = findLeaks(TEST_STATE_DIR);
if (hasLeaks(l) || l.tempDirs.length > 0) {
  process.stderr.write(`LEAK CHECK FAILED: ${describeLeaks(l)}\n`);
  process.exit(1);
}
process.stdout.write("leak check: no QEMU process, mount, sandbox state or temp dir left\n");
