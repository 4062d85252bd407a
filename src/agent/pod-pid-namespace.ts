// The pod's shared pid namespace in the guest (CRI's POD pid mode).
//
// The guest's root pid namespace holds the agent, its helper shell and crun.
// Containers that share the pod's pid namespace (kubelet's
// shareProcessNamespace; CRI's default when namespace_options is unset) join
// one the agent makes instead: `unshare -p -f` forks a holder that is pid 1
// there, as kubelet's pause is, ignores the signals a pod could send it (pid 1
// of a namespace only gets the ones it handles from inside; a trap of "" is
// none) and reaps the pod's orphans (ash's `wait` collects any child). The
// host marks such a namespace GUEST_POD_PID_NS in the guest spec
// (src/runtime/oci-spec.ts); the agent replaces that with the holder's
// /proc/<pid>/ns/pid. A VM makes it when the first container joins (a cold
// VM's StartContainer ~18 ms longer; made earlier, it slowed the sandbox's
// own start as much: one vCPU, docs/benchmarks.md, fourteenth stop); a
// template makes it before its save, so that each clone has its own copy.
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { Code } from "../protocols/ttrpc/status.js";
import { AgentError } from "../runtime/errors.js";
import type { Logger } from "../runtime/logger.js";
import { GUEST_POD_PID_NS } from "../runtime/oci-spec.js";

const BUSYBOX = "/bin/busybox";
/** pid 1 of the pod's pid namespace: ignores HUP, INT and TERM, reaps every child. */
const HOLDER_SCRIPT = 'trap "" HUP INT TERM; while :; do /bin/busybox sleep 86400 & wait; done';
const FIND_HOLDER_MS = 5_000;

interface OciNamespace {
  type: string;
  path?: string;
}

/** The spec with the holder's pid namespace file for GUEST_POD_PID_NS; unchanged if it names none (or is no JSON: create says so). */
export function withPodPidNamespace(specJson: string, nsPath: string): string {
  let spec: { linux?: { namespaces?: OciNamespace[] } };
  try {
    spec = JSON.parse(specJson) as typeof spec;
  } catch {
    return specJson;
  }
  for (const n of spec.linux?.namespaces ?? []) if (n.type === "pid" && n.path === GUEST_POD_PID_NS) n.path = nsPath;
  return JSON.stringify(spec);
}

/** Whether a guest spec asks for the pod's pid namespace. */
export function wantsPodPidNamespace(specJson: string): boolean {
  return specJson.includes(GUEST_POD_PID_NS);
}

/** Children of `pid` (its main thread's), from /proc; [] once it is gone. */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export class PodPidNamespace {
  private holder: Promise<number> | undefined;
  private unshare: ChildProcess | undefined;

  constructor(private readonly log: Logger) {}

  /** `/proc/<holder>/ns/pid`, the holder started on first use (and again if it died). */
  async path(): Promise<string> {
    if (this.holder === undefined) this.holder = this.start();
    try {
      return `/proc/${await this.holder}/ns/pid`;
    } catch (err) {
      this.holder = undefined;
      throw err;
    }
  }

  private async start(): Promise<number> {
    const t0 = performance.now();
    const child = spawn(BUSYBOX, ["unshare", "-p", "-f", BUSYBOX, "sh", "-c", HOLDER_SCRIPT], { stdio: ["ignore", "ignore", "pipe"] });
    this.unshare = child;
    let stderr = "";
    child.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
    let exited = false;
    child.on("error", () => {});
    child.once("exit", (code, signal) => {
      exited = true;
      // A later container of the pod gets a new namespace; the old one's processes died with its pid 1.
      if (this.unshare === child) this.holder = undefined;
      this.log.warn({ code, signal, stderr: stderr.trim() }, "the pod's pid namespace holder exited");
    });
    const fail = (why: string): AgentError =>
      new AgentError("pod", `cannot make the pod's pid namespace: ${why}`, {
        code: Code.INTERNAL,
        hint: "the guest image needs busybox's unshare; use pid namespace mode CONTAINER to run without it",
      });
    if (child.pid === undefined) throw fail(`${BUSYBOX} unshare did not start`);
    const deadline = Date.now() + FIND_HOLDER_MS;
    for (let wait = 1; ; wait = Math.min(wait * 2, 20)) {
      const [holder] = childrenOf(child.pid);
      if (holder !== undefined) {
        this.log.info({ holder, ms: Math.round(performance.now() - t0) }, "pod pid namespace made");
        return holder;
      }
      if (exited) throw fail(`${BUSYBOX} unshare -p -f exited: ${stderr.trim() || "no error output"}`);
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw fail(`no holder process within ${FIND_HOLDER_MS} ms`);
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}
