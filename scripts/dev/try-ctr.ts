// Developer tool: private containerd + busybox image, then ctr with the hako runtime.
import { startContainerd, importBusybox } from "../../test/helpers/containerd.js";
import { ensureTestConfig } from "../../test/helpers/hako.js";

const args = process.argv.slice(2);
const c = await startContainerd({ env: { HAKO_CONFIG: process.env.HAKO_CONFIG ?? ensureTestConfig() } });
try {
  const ref = await importBusybox(c);
  const t0 = Date.now();
  const r = await c.ctr(["run", "--rm", "--runtime", "io.containerd.hako.v2", ref, "c1", ...(args.length ? args : ["uname", "-r"])], { timeoutMs: 90_000 });
  console.log("status", r.status, "ms", Date.now() - t0);
  console.log("stdout", JSON.stringify(r.stdout.toString()));
  console.log("stderr", r.stderr);
} finally {
  console.log(c.logs().split("\n").slice(-40).join("\n"));
  await c.stop();
}
