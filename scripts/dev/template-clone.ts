// Developer experiment for VM templating (issue 5, docs/templating.md):
// boots a template VM with hako's own QEMU command line on file-backed shared
// memory, saves its device state with x-ignore-shared once the agent answers,
// then starts N clones that map the template memory privately (copy-on-write)
// and restore from the state, and reports times and each clone's PSS.
//
//   node --import tsx scripts/dev/template-clone.ts [--clones N] [--config FILE]
//
// Everything lives in a /dev/shm directory removed at the end; QEMU processes
// are ended by their own pids.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildQemuArgs } from "../../src/hypervisor/qemu/command-line.js";
import { QmpClient } from "../../src/hypervisor/qemu/qmp-client.js";
import { connectAgentWhenReady, type AgentClient } from "../../src/runtime/agent-client.js";
import { loadConfig } from "../../src/runtime/config.js";

const { values: opts } = parseArgs({ options: { clones: { type: "string", default: "3" }, config: { type: "string" } } });
const cfg = loadConfig(opts.config);
const q = cfg.hypervisor.qemu;
const MEM_MIB = q.default_memory;
const dir = join("/dev/shm", `hako-template-exp-${process.pid}`);
const memPath = join(dir, "memory");
const statePath = join(dir, "state");
const children: ChildProcess[] = [];

interface Vm {
  name: string;
  proc: ChildProcess;
  exited: Promise<unknown>;
  qmp: QmpClient;
}

function vmArgs(name: string, role: "template" | "clone"): string[] {
  mkdirSync(join(dir, `share-${name}`), { recursive: true });
  const args = buildQemuArgs(
    {
      id: name,
      runDir: dir,
      accel: "tcg",
      vcpus: 1,
      memoryMiB: MEM_MIB,
      kernel: q.kernel,
      initrd: q.initrd,
      // No hako.share: a mounted 9p export blocks migration, so the share is mounted after restore.
      kernelParams: ["hako.node_opts=--jitless"],
      sharedDirs: [{ tag: "hakoShared", hostPath: join(dir, `share-${name}`) }],
      consoleLog: join(dir, `${name}.console`),
      verboseConsole: false,
    },
    // The balloon would report (and discard) the template's free pages; clones need them mapped.
    { ...q, free_page_reporting: false },
    { qmpSocket: join(dir, `${name}.qmp`), agentSocket: join(dir, `${name}.agent`), pidFile: join(dir, `${name}.pid`) },
  );
  const m = args.indexOf("-machine");
  args[m + 1] = `${args[m + 1]},memory-backend=mem`;
  // Template: shared, so its RAM is the file. Clone: private mapping of the same file (copy-on-write).
  args.push("-object", `memory-backend-file,id=mem,size=${MEM_MIB}M,mem-path=${memPath},share=${role === "template" ? "on" : "off"}`);
  if (role === "clone") args.push("-incoming", "defer");
  return args;
}

async function startVm(name: string, role: "template" | "clone"): Promise<Vm> {
  const proc = spawn(q.path, vmArgs(name, role), { stdio: ["ignore", "ignore", "inherit"] });
  children.push(proc);
  const exited = new Promise((r) => proc.once("exit", r));
  const qmp = await QmpClient.connect({ socketPath: join(dir, `${name}.qmp`), id: name, deadline: Date.now() + 10_000 });
  return { name, proc, exited, qmp };
}

async function migrationDone(qmp: QmpClient, what: string): Promise<void> {
  for (;;) {
    const st = await qmp.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
    if (st.status === "completed") return;
    if (st.status === "failed") throw new Error(`${what} failed: ${st["error-desc"] ?? "no detail"}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const ignoreShared = { capabilities: [{ capability: "x-ignore-shared", state: true }] };

function pss(pid: number): string {
  const want = /^(Pss|Pss_Anon|Pss_File|Pss_Shmem):\s+(\d+)/;
  return readFileSync(`/proc/${pid}/smaps_rollup`, "utf8")
    .split("\n")
    .map((l) => want.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => `${m[1]} ${(Number(m[2]) / 1024).toFixed(1)} MiB`)
    .join(", ");
}

mkdirSync(dir, { recursive: true });
try {
  let t = Date.now();
  const tpl = await startVm("template", "template");
  const tplAgent = await connectAgentWhenReady("template", join(dir, "template.agent"), 60_000, tpl.exited);
  console.log(`template: agent ready ${Date.now() - t} ms after spawn`);
  tplAgent.close();
  await tpl.qmp.execute("stop");
  await tpl.qmp.execute("migrate-set-capabilities", ignoreShared);
  t = Date.now();
  await tpl.qmp.execute("migrate", { uri: `exec:cat > ${statePath}` });
  await migrationDone(tpl.qmp, "saving the template");
  console.log(`template: device state saved in ${Date.now() - t} ms (${statSync(statePath).size} bytes), memory file ${MEM_MIB} MiB`);
  await tpl.qmp.execute("quit").catch(() => undefined);
  await tpl.exited;

  const clones: Array<{ vm: Vm; agent: AgentClient }> = [];
  for (let i = 0; i < Number(opts.clones); i++) {
    t = Date.now();
    const vm = await startVm(`clone${i}`, "clone");
    await vm.qmp.execute("migrate-set-capabilities", ignoreShared);
    await vm.qmp.execute("migrate-incoming", { uri: `exec:cat ${statePath}` });
    await migrationDone(vm.qmp, `restoring clone${i}`);
    await vm.qmp.execute("cont");
    const agent = await connectAgentWhenReady(vm.name, join(dir, `${vm.name}.agent`), 30_000, vm.exited);
    const ready = Date.now() - t;
    const t2 = Date.now();
    await agent.agent.createSandbox({
      sandboxId: vm.name,
      hostname: vm.name,
      storages: [{ driver: "9p", source: "hakoShared", fstype: "9p", options: [`msize=${q.msize_9p}`, "cache=mmap"], mountPoint: "/run/hako/shared" }],
      hostTimeUnixNano: BigInt(Date.now()) * 1_000_000n,
    });
    const details = await agent.agent.getGuestDetails({});
    console.log(`clone${i}: agent ready ${ready} ms after spawn; CreateSandbox (9p mount, hostname, clock) ${Date.now() - t2} ms; guest boot id ${details.bootId.slice(0, 8)}`);
    clones.push({ vm, agent });
  }
  await new Promise((r) => setTimeout(r, 3000));
  for (const c of clones) console.log(`${c.vm.name}: ${pss(c.vm.proc.pid!)}`);
  for (const c of clones) {
    c.agent.close();
    await c.vm.qmp.execute("quit").catch(() => undefined);
    await c.vm.exited;
  }
} finally {
  for (const p of children) if (p.exitCode === null && p.signalCode === null && p.pid) process.kill(p.pid, "SIGKILL");
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
