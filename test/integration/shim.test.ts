// containerd-shim-hako-v2 under a real, private containerd 1.6: ctr drives
// tasks that run in VMs. Each test leaves no shim, QEMU, mount or state behind.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { shimSocketAddress, socketPathOf } from "../../src/shim/address.js";
import { join } from "node:path";
import * as pty from "node-pty";
import { startContainerd, importBusybox, podShimPids, type Containerd } from "../helpers/containerd.js";
import { ensureTestConfig, TEST_STATE_DIR } from "../helpers/hako.js";
import { describeLeaks, findLeaks, hasLeaks } from "../helpers/leaks.js";
import { ksmMergeAnyAvailable } from "../../src/resource/ksm.js";
import { isSpareShim, processTable, readProcess } from "../helpers/processes.js";
import { TtrpcClient, createServiceClient, Code, TtrpcError } from "../../src/protocols/ttrpc/index.js";
import { Task } from "../../src/protocols/gen/containerd/runtime/task/v2/shim_pb.js";

const RT = ["--runtime", "io.containerd.hako.v2"];
const HOST_KERNEL = execFileSync("uname", ["-r"], { encoding: "utf8" }).trim();
let c: Containerd;
let image: string;
let eventLines: string[] = [];
let eventsProc: ChildProcess | undefined;
let stopping = false;

/** `ctr events` prints one line per event (time, namespace, topic, payload); it ends when containerd restarts. */
function listenEvents(): void {
  const p = c.ctrSpawn(["events"]);
  eventsProc = p;
  let buf = "";
  p.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split("\n");
    buf = lines.pop() ?? "";
    eventLines.push(...lines);
  });
  p.on("close", () => {
    if (!stopping) setTimeout(listenEvents, 200);
  });
}

before(async () => {
  c = await startContainerd({ env: { HAKO_CONFIG: ensureTestConfig() } });
  image = await importBusybox(c);
  listenEvents();
  await new Promise((r) => setTimeout(r, 300));
});
const fifoDir = "/run/containerd/fifo";
const fifosBefore = new Set(existsSync(fifoDir) ? readdirSync(fifoDir) : []);
after(async () => {
  stopping = true;
  eventsProc?.kill();
  await c?.stop();
  const left = (existsSync(fifoDir) ? readdirSync(fifoDir) : []).filter((f) => !fifosBefore.has(f));
  assert.deepEqual(left, [], "no fifo directory left by the tests' ctr runs");
});

/** Pod shim processes of our containerd (its socket is in their argv; so it is in `ctr events`'), spares left out. */
function shimPids(): number[] {
  return podShimPids(c.address).filter((p) => p !== eventsProc?.pid);
}

/** The /tasks/ topics published for a container, in arrival order. */
async function taskTopics(id: string, want: number): Promise<string[]> {
  const pick = (): string[] =>
    eventLines.filter((l) => l.includes(`"${id}"`) || l.includes(`container_id:"${id}"`) || l.includes(`"container_id":"${id}"`)).map((l) => /\/tasks\/[a-z-]+/.exec(l)?.[0] ?? "").filter(Boolean);
  for (let i = 0; i < 50 && pick().length < want; i++) await new Promise((r) => setTimeout(r, 100));
  return pick();
}
afterEach(async () => {
  // Tasks started by a test are gone after it; shims exit once they serve nothing.
  for (let i = 0; i < 50 && shimPids().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
  const l = findLeaks(TEST_STATE_DIR);
  assert.ok(!hasLeaks(l), `leaked: ${describeLeaks(l)}`);
  assert.deepEqual(shimPids(), [], "no shim process left");
});

async function ctrOk(args: string[], input?: string): Promise<string> {
  const r = await c.ctr(args, { timeoutMs: 120_000, input });
  assert.equal(r.status, 0, `ctr ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.toString();
}

async function waitForStatus(id: string, status: string, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const out = await ctrOk(["task", "ls"]);
    const line = out.split("\n").find((l) => l.startsWith(`${id} `)) ?? "";
    if (line.includes(status)) return line;
    if (Date.now() > deadline) throw new Error(`task ${id} did not reach ${status}: ${line}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function shimClient(id: string): Promise<{ task: ReturnType<typeof createServiceClient<typeof Task>>; close(): void }> {
  const bundle = join(c.state, "io.containerd.runtime.v2.task", c.namespace, id);
  const addr = readFileSync(join(bundle, "address"), "utf8").replace(/^unix:\/\//, "");
  return TtrpcClient.connect(addr).then((client) => ({
    task: createServiceClient(Task, client, { metadata: { "containerd-namespace-ttrpc": c.namespace } }),
    close: () => client.close(),
  }));
}

test("ctr run --rm prints the guest kernel and passes the exit status through; events in order", async () => {
  eventLines = [];
  const out = await ctrOk(["run", "--rm", ...RT, image, "s1", "uname", "-r"]);
  assert.match(out.trim(), /^\d+\.\d+\.\d+/);
  assert.notEqual(out.trim(), HOST_KERNEL);
  assert.deepEqual(await taskTopics("s1", 4), ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], eventLines.join("\n"));
  const r = await c.ctr(["run", "--rm", ...RT, image, "s2", "sh", "-c", "exit 3"], { timeoutMs: 120_000 });
  assert.equal(r.status, 3, r.stderr);
});

test("stdin reaches the task: echo hello | ctr run cat", async () => {
  // ctr 1.6 attaches stdin without a flag.
  const out = await ctrOk(["run", "--rm", ...RT, image, "s3", "cat"], "hello\n");
  assert.equal(out, "hello\n");
});

test("a shim leaves a spare behind: the next task's shim is that process, and ps names its task", async () => {
  // The tasks before left one (src/shim/spare.ts): node and the shim's modules already loaded.
  const spares = (): number[] => processTable().filter((p) => p.argv.includes(c.address) && isSpareShim(p)).map((p) => p.pid);
  for (let i = 0; i < 50 && spares().length === 0; i++) await new Promise((r) => setTimeout(r, 100));
  const [spare] = spares();
  assert.ok(spare !== undefined, "a spare waits for the next task");
  await ctrOk(["run", "-d", ...RT, image, "sp1", "sleep", "600"]);
  try {
    await waitForStatus("sp1", "RUNNING");
    assert.deepEqual(shimPids(), [spare], "the spare serves the new task");
    assert.match(readFileSync(`/proc/${spare}/cmdline`, "utf8"), / -namespace default -address \S+ -id sp1 serve\0/);
    assert.equal((await ctrOk(["task", "exec", "--exec-id", "e1", "sp1", "hostname"])).trim(), "sp1");
    // It leaves the next spare in turn (after 1 s): not its child, or every pod's
    // shim would hang below the one before it.
    for (let i = 0; i < 50 && spares().length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    const [next] = spares();
    assert.ok(next !== undefined, "the serving spare left a spare");
    assert.notEqual(readProcess(next)?.ppid, spare, "the new spare is no child of the shim that started it");
  } finally {
    await c.ctr(["task", "kill", "-s", "KILL", "sp1"]);
    await waitForStatus("sp1", "STOPPED").catch(() => undefined);
    await c.ctr(["task", "delete", "-f", "sp1"]);
    await c.ctr(["container", "delete", "sp1"]);
  }
});

test("detached task: exec, ps, metrics, pause/resume, TERM → 143, delete", async () => {
  const id = "d1";
  await ctrOk(["run", "-d", ...RT, image, id, "sh", "-c", "trap 'exit 143' TERM; while true; do sleep 1; done"]);
  try {
    await waitForStatus(id, "RUNNING");
    eventLines = [];
    assert.equal((await ctrOk(["task", "exec", "--exec-id", "e1", id, "cat", "/etc/hostname"])).trim(), "busybox");
    assert.equal((await ctrOk(["task", "exec", "--exec-id", "e0", id, "hostname"])).trim(), id);
    assert.deepEqual((await taskTopics(id, 3)).slice(0, 3), ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"], eventLines.join("\n"));
    const r = await c.ctr(["task", "exec", "--exec-id", "e2", id, "sh", "-c", "exit 4"], { timeoutMs: 60_000 });
    assert.equal(r.status, 4);
    const ps = await ctrOk(["task", "ps", id]);
    assert.ok(ps.trim().split("\n").length >= 2, ps);
    const metrics = await ctrOk(["task", "metrics", id]);
    const mem = /memory\.usage_in_bytes\s+(\d+)/.exec(metrics);
    assert.ok(mem && Number(mem[1]) > 0, metrics);
    await ctrOk(["task", "pause", id]);
    await waitForStatus(id, "PAUSED");
    await ctrOk(["task", "resume", id]);
    await waitForStatus(id, "RUNNING");
    await ctrOk(["task", "kill", "-s", "TERM", id]);
    await waitForStatus(id, "STOPPED");
    const st = await shimClient(id);
    try {
      const s = await st.task.state({ id });
      assert.equal(s.exitStatus, 143);
    } finally {
      st.close();
    }
  } finally {
    await c.ctr(["task", "delete", "-f", id]);
    await c.ctr(["container", "delete", id]);
  }
});

test("a TTY run (ctr run -t) from a pty works and follows resizes", async () => {
  const out = await new Promise<{ text: string; code: number }>((resolve) => {
    const p = pty.spawn("ctr", ["--address", c.address, "--namespace", c.namespace, "run", "--rm", "-t", ...RT, image, "t1", "sh", "-c", "test -t 0 && echo IS_A_TTY; stty size; read x; stty size"], { cols: 90, rows: 30 });
    let text = "";
    let resized = false;
    p.onData((d) => {
      text += d;
      // ctr sends its first ResizePty right after Start (the first `stty size` may still see
      // 24 80) and containerd may deliver it late: resize only once it has surely landed.
      if (!resized && /IS_A_TTY[\s\S]*\d+ \d+/.test(text)) {
        resized = true;
        setTimeout(() => {
          p.resize(111, 44);
          setTimeout(() => p.write("go\r"), 1500);
        }, 1500);
      }
    });
    p.onExit(({ exitCode }) => resolve({ text, code: exitCode }));
  });
  assert.equal(out.code, 0, out.text);
  assert.match(out.text, /IS_A_TTY/);
  assert.match(out.text, /44 111/);
});

test("two tasks with the same io.kubernetes.cri.sandbox-id share one VM and one shim", async () => {
  await ctrOk(["run", "-d", ...RT, "--annotation", "io.kubernetes.cri.sandbox-id=p1", image, "p1", "sleep", "600"]);
  try {
    await ctrOk(["run", "-d", ...RT, "--annotation", "io.kubernetes.cri.sandbox-id=p1", image, "p1c", "sleep", "600"]);
    const boot = async (id: string): Promise<string> => (await ctrOk(["task", "exec", "--exec-id", `b-${id}`, id, "cat", "/proc/sys/kernel/random/boot_id"])).trim();
    assert.equal(await boot("p1"), await boot("p1c"));
    assert.equal(shimPids().length, 1, "one shim process");
    assert.equal(findLeaks(TEST_STATE_DIR).qemu.length, 1, "one QEMU");
    // The shim's launcher and the QEMU spawn go through hako-ksm-exec: all their
    // memory is KSM's to merge (merge_all_memory, the default), not only guest RAM.
    if (ksmMergeAnyAvailable()) {
      const qemuPid = Number(findLeaks(TEST_STATE_DIR).qemu[0]!.split(" ")[0]);
      for (const [what, pid] of [["the shim", shimPids()[0]!], ["QEMU", qemuPid]] as const) {
        assert.match(readFileSync(`/proc/${pid}/ksm_stat`, "utf8"), /^ksm_merge_any: yes$/m, `${what} (pid ${pid}) runs with its whole memory mergeable`);
      }
    }
  } finally {
    for (const id of ["p1c", "p1"]) {
      await c.ctr(["task", "kill", "-s", "KILL", id]);
      await c.ctr(["task", "delete", "-f", id]);
      await c.ctr(["container", "delete", id]);
    }
  }
});

test("containerd restarts while a task runs: it reconnects and the task can be exec'd, killed, deleted", async () => {
  const id = "r1";
  await ctrOk(["run", "-d", ...RT, image, id, "sleep", "600"]);
  try {
    await waitForStatus(id, "RUNNING");
    await c.restart();
    await waitForStatus(id, "RUNNING");
    assert.equal((await ctrOk(["task", "exec", "--exec-id", "e1", id, "echo", "still"])).trim(), "still");
    await ctrOk(["task", "kill", "-s", "KILL", id]);
    await waitForStatus(id, "STOPPED");
  } finally {
    await c.ctr(["task", "delete", "-f", id]);
    await c.ctr(["container", "delete", id]);
  }
});

test("kill -9 of the shim: containerd cleans up through delete, the VM goes away", async () => {
  const id = "k1";
  await ctrOk(["run", "-d", ...RT, image, id, "sleep", "600"]);
  try {
    await waitForStatus(id, "RUNNING");
    const shims = shimPids();
    assert.equal(shims.length, 1);
    process.kill(shims[0]!, "SIGKILL");
    // containerd notices the closed connection and runs `containerd-shim-hako-v2 delete`.
    const deadline = Date.now() + 30_000;
    const socket = socketPathOf(shimSocketAddress(c.address, c.namespace, id));
    while (findLeaks(TEST_STATE_DIR).qemu.length > 0 || findLeaks(TEST_STATE_DIR).sandboxes.length > 0 || existsSync(socket)) {
      if (Date.now() > deadline) throw new Error(`not cleaned after the shim died: ${describeLeaks(findLeaks(TEST_STATE_DIR))}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await c.ctr(["task", "delete", "-f", id]);
    await c.ctr(["container", "delete", id]);
    // containerd already removed the task of the dead shim, so ctr never gets
    // to delete the fifos it made for `run -d`: that is ctr's leftover, removed here.
    for (const f of readdirSync(fifoDir).filter((f) => !fifosBefore.has(f))) rmSync(join(fifoDir, f), { recursive: true, force: true });
  }
});

test("kill -9 of QEMU: the task exits with a non-zero status and everything is cleaned", async () => {
  const id = "q1";
  await ctrOk(["run", "-d", ...RT, image, id, "sleep", "600"]);
  try {
    await waitForStatus(id, "RUNNING");
    const [q] = findLeaks(TEST_STATE_DIR).qemu;
    assert.ok(q);
    eventLines = [];
    process.kill(Number(q.split(" ")[0]), "SIGKILL");
    await waitForStatus(id, "STOPPED");
    assert.deepEqual(await taskTopics(id, 1), ["/tasks/exit"], eventLines.join("\n"));
    const st = await shimClient(id);
    try {
      assert.notEqual((await st.task.state({ id })).exitStatus, 0);
    } finally {
      st.close();
    }
  } finally {
    await c.ctr(["task", "delete", "-f", id]);
    await c.ctr(["container", "delete", id]);
  }
});

test("bad input: unknown ids → NotFound, duplicate Create → AlreadyExists, a missing binary fails with the guest's error", async () => {
  const id = "b1";
  await ctrOk(["run", "-d", ...RT, image, id, "sleep", "600"]);
  const st = await shimClient(id);
  try {
    const codeOf = async (p: Promise<unknown>): Promise<number> => p.then(() => -1, (e: unknown) => (e instanceof TtrpcError ? e.code : -2));
    assert.equal(await codeOf(st.task.state({ id: "nope" })), Code.NOT_FOUND);
    assert.equal(await codeOf(st.task.start({ id: "nope" })), Code.NOT_FOUND);
    assert.equal(await codeOf(st.task.kill({ id: "nope", signal: 9 })), Code.NOT_FOUND);
    const bundle = join(c.state, "io.containerd.runtime.v2.task", c.namespace, id);
    assert.equal(await codeOf(st.task.create({ id, bundle })), Code.ALREADY_EXISTS);
  } finally {
    st.close();
    await c.ctr(["task", "kill", "-s", "KILL", id]);
    await c.ctr(["task", "delete", "-f", id]);
    await c.ctr(["container", "delete", id]);
  }
  const r = await c.ctr(["run", "--rm", ...RT, image, "b2", "/no/such/binary"], { timeoutMs: 120_000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /crun could not start container b2 .*no\/such\/binary/);
  assert.deepEqual(findLeaks(TEST_STATE_DIR).qemu, [], "the VM of the failed task is gone at once");
});
