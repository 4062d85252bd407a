// Warm-up of the agent's own code paths before a VM template is saved.
//
// A clone resumes the template's memory, and with it whatever V8 had parsed,
// compiled and optimised in the template's agent; what the template never ran
// is compiled in every clone, under TCG, on the pod-start path. So the
// template's agent runs, once, the paths a pod start takes: process spawns
// (execFile, a piped and a pseudo-terminal GuestProcess), the network script
// builders and runner, and waits for them. Nothing is left behind: only
// /bin/true runs, and the builders are pure.
import { execFileAsync } from "../runtime/command.js";
import { GuestProcess } from "./guest-process.js";
import { interfaceCommands, neighborCommands, routeCommands, runCommands } from "./guest-network.js";

export async function warmUp(rounds = 3): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < rounds; i++) {
    await execFileAsync("/bin/true", [], { encoding: "utf8", timeout: 10_000 });
    await runCommands("warm-up", [["/bin/true"], ["/bin/true"]], "");
    for (const terminal of [false, true]) {
      const p = new GuestProcess("/bin/true", [], { terminal });
      await p.exited;
    }
    interfaceCommands(
      { device: "eth0", name: "eth0", hwAddr: "02:00:00:00:00:01", mtu: 1500, addresses: [{ family: 4, address: "10.0.0.2", prefixLength: 24 }] },
      [{ name: "eth0", mac: "02:00:00:00:00:02", up: false }],
    );
    routeCommands([{ dest: "0.0.0.0/0", gateway: "10.0.0.1", device: "eth0", source: "", scope: 0 }], () => true);
    neighborCommands([{ toIpAddress: "10.0.0.1", device: "eth0", llAddr: "02:00:00:00:00:03", state: 0x80 }], () => true);
  }
  return performance.now() - t0;
}
