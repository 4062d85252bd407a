// make demo, part 2: a Kubernetes pod in a VM, driven through containerd's
// CRI as kubelet would drive it. Uses the private containerd the tests use
// (CRI plugin, a CNI bridge network, handlers hako and runc): nothing of the
// host's own containerd is touched, and everything is removed at the end.
import { get } from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CriClient } from "../src/cli/cri/cri-client.js";
import { startCriContainerd } from "../test/helpers/cri-containerd.js";
import { containerConfig, podConfig } from "../test/helpers/cri-specs.js";

function fetchText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(url, { timeout: 10_000 }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve(body.trim()));
    }).on("error", reject);
  });
}

const say = (s: string): void => void process.stdout.write(`${s}\n`);
const logs = mkdtempSync(join(tmpdir(), "hako-demo-pod-"));
const c = await startCriContainerd();
const cri = new CriClient(c.criAddress, { defaultTimeoutMs: 120_000 });
try {
  const spec = { name: "demo", uid: "demo-1", hostname: "demo-pod", logDir: logs };
  const t0 = Date.now();
  const pod = await cri.runPodSandbox(podConfig(spec), "hako");
  const web = await cri.createContainer(
    pod,
    containerConfig("web", ["sh", "-c", "mkdir -p /www && echo hello from a hako pod > /www/index.html && exec httpd -f -p 8080 -h /www"], { image: c.busybox }),
    podConfig(spec),
  );
  await cri.startContainer(web);
  const client = await cri.createContainer(pod, containerConfig("client", ["sleep", "3600"], { image: c.busybox }), podConfig(spec));
  await cri.startContainer(client);
  say(`pod ${pod.slice(0, 12)} (runtime handler hako) with 2 containers running after ${Date.now() - t0} ms`);
  const text = async (cid: string, cmd: string[]): Promise<string> => Buffer.from((await cri.execSync(cid, cmd, { timeoutSeconds: 30 })).stdout).toString().trim();
  say(`  guest kernel (both containers, one VM): ${await text(web, ["uname", "-r"])}`);
  const ip = (await cri.podSandboxStatus(pod)).status?.network?.ip ?? "";
  say(`  pod IP from CNI: ${ip}; host → http://${ip}:8080/ → "${await fetchText(`http://${ip}:8080/`)}"`);
  say(`  client container → http://localhost:8080/ → "${await text(client, ["wget", "-q", "-O-", "http://localhost:8080/"])}"`);
  await cri.stopPodSandbox(pod);
  await cri.removePodSandbox(pod);
  say("  pod stopped and removed");
} finally {
  cri.close();
  await c.stop();
  rmSync(logs, { recursive: true, force: true });
}
