// runc-style verbs on a container that `hako run` owns: exec, kill, state,
// list, delete. They reach the agent through the owner's proxy socket.
import { constants as osConstants } from "node:os";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { Code } from "../protocols/ttrpc/status.js";
import { dialAgent } from "../runtime/agent-client.js";
import { proxySocketPath } from "../runtime/agent-proxy.js";
import { RuntimeError } from "../runtime/errors.js";
import { loadBundle } from "../runtime/oci-spec.js";
import { removeTree } from "../resource/mounts.js";
import { removeRecordedNetwork } from "../resource/network/pod-network.js";
import { killRecordedVmm, listSandboxIds, pidMatches, readState, sandboxDir, type SandboxState } from "../runtime/state.js";
import { pumpInput, pumpOutput } from "../runtime/stdio-relay.js";
import { setup, type GlobalOptions } from "./common.js";

function requireState(stateDir: string, id: string): { dir: string; st: SandboxState } {
  const dir = sandboxDir(stateDir, id);
  const st = readState(dir);
  if (!st) throw new RuntimeError(Code.NOT_FOUND, id, `container ${id} does not exist`, { hint: "see `hako list`" });
  return { dir, st };
}

/** Status as the OCI runtime state reports it. */
function liveStatus(st: SandboxState): string {
  const ownerAlive = pidMatches(st.ownerPid, "hako");
  const vmAlive = pidMatches(st.vmmPid, "qemu");
  if (!ownerAlive && !vmAlive) return "stopped";
  return st.status;
}

export function parseSignal(sig: string): number {
  if (/^\d+$/.test(sig)) return Number(sig);
  const name = (sig.startsWith("SIG") ? sig : `SIG${sig}`).toUpperCase();
  const n = (osConstants.signals as Record<string, number>)[name];
  if (!n) throw new RuntimeError(Code.INVALID_ARGUMENT, "", `unknown signal ${sig}`);
  return n;
}

export async function execInContainer(id: string, args: string[], opts: GlobalOptions & { tty?: boolean; cwd?: string; env?: string[] }): Promise<number> {
  const { cfg } = setup(opts);
  const { dir, st } = requireState(cfg.runtime.state_dir, id);
  if (liveStatus(st) !== "running") throw new RuntimeError(Code.FAILED_PRECONDITION, id, `container ${id} is not running`);
  if (args.length === 0) throw new RuntimeError(Code.INVALID_ARGUMENT, id, "hako exec needs a command");
  const base = loadBundle(id, st.bundle).spec.process ?? {};
  const proc = {
    ...base,
    args,
    terminal: false,
    cwd: opts.cwd ?? base.cwd ?? "/",
    env: [...(base.env ?? []), ...(opts.env ?? [])],
    consoleSize: opts.tty ? { height: process.stdout.rows ?? 24, width: process.stdout.columns ?? 80 } : undefined,
  };
  const client = await dialAgent(id, proxySocketPath(dir));
  const agent = client.agent;
  const execId = `exec-${randomBytes(6).toString("hex")}`;
  let raw = false;
  let stopInput: (() => void) | undefined;
  try {
    await agent.execProcess({ containerId: id, execId, processJson: JSON.stringify(proc), terminal: !!opts.tty });
    if (opts.tty && process.stdin.isTTY) {
      process.stdin.setRawMode(true);
      raw = true;
    }
    stopInput = pumpInput(agent, id, execId, process.stdin);
    const outputs = Promise.all([pumpOutput(agent, "stdout", id, execId, process.stdout), pumpOutput(agent, "stderr", id, execId, process.stderr)]);
    const res = await agent.waitProcess({ containerId: id, execId });
    await outputs;
    return res.status;
  } finally {
    stopInput?.();
    process.stdin.destroy();
    if (raw) process.stdin.setRawMode(false);
    client.close();
  }
}

export async function killContainer(id: string, signal: string, opts: GlobalOptions & { all?: boolean }): Promise<void> {
  const { cfg } = setup(opts);
  const { dir, st } = requireState(cfg.runtime.state_dir, id);
  if (liveStatus(st) === "stopped") throw new RuntimeError(Code.NOT_FOUND, id, `container ${id} is not running`);
  const client = await dialAgent(id, proxySocketPath(dir));
  try {
    await client.agent.signalProcess({ containerId: id, execId: "", signal: parseSignal(signal), all: !!opts.all });
  } finally {
    client.close();
  }
}

export function containerState(id: string, opts: GlobalOptions): object {
  const { cfg } = setup(opts);
  const { st } = requireState(cfg.runtime.state_dir, id);
  return {
    ociVersion: "1.0.2",
    id: st.id,
    status: liveStatus(st),
    pid: st.vmmPid,
    bundle: st.bundle,
    created: st.created,
    annotations: { "io.hako.guest-pid": String(st.guestPid), "io.hako.accel": st.accel ?? "" },
  };
}

export function listContainers(opts: GlobalOptions): Array<{ id: string; status: string; pid: number; bundle: string; created: string }> {
  const { cfg } = setup(opts);
  return listSandboxIds(cfg.runtime.state_dir).flatMap((id) => {
    const st = readState(sandboxDir(cfg.runtime.state_dir, id));
    return st ? [{ id, status: liveStatus(st), pid: st.vmmPid, bundle: st.bundle, created: st.created }] : [];
  });
}

/** Removes a stopped container's leftovers; with force, stops a running one first (by PID). */
export async function deleteContainer(id: string, opts: GlobalOptions & { force?: boolean }): Promise<void> {
  const { cfg } = setup(opts);
  const dir = sandboxDir(cfg.runtime.state_dir, id);
  const st = readState(dir);
  if (!st) {
    if (existsSync(dir)) return removeTree(id, dir);
    throw new RuntimeError(Code.NOT_FOUND, id, `container ${id} does not exist`);
  }
  const ownerAlive = pidMatches(st.ownerPid, "hako") && st.ownerPid !== process.pid;
  const vmAlive = pidMatches(st.vmmPid, "qemu");
  if ((ownerAlive || vmAlive) && !opts.force) throw new RuntimeError(Code.FAILED_PRECONDITION, id, `container ${id} is running`, { hint: "stop it first or use --force" });
  if (ownerAlive) {
    // The owner tears down its own sandbox on SIGTERM.
    process.kill(st.ownerPid, "SIGTERM");
    for (let i = 0; i < 100 && existsSync(dir); i++) await new Promise((r) => setTimeout(r, 100));
  }
  await killRecordedVmm(st.vmmPid);
  // What the owner did not get to remove (it died, or its own removal failed):
  // the pod network plumbing named in state.json, then the state itself. If the
  // network removal fails, the state stays so that a later delete can retry.
  await removeRecordedNetwork((readState(dir) ?? st).network);
  await removeTree(id, dir);
}
