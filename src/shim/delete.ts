// `containerd-shim-hako-v2 … -id ID -bundle B delete`: containerd 1.6 runs it
// after every shim connection closes (normal teardown included) and when a
// shim is gone. It must be idempotent, touch only task ID, never stop a shim
// that still serves other ids, and print a raw DeleteResponse protobuf on
// stdout (stderr is logged by containerd as "cleanup warnings").
import { loadConfig } from "../runtime/config.js";
import { killRecordedVmm, pidMatches, readState, sandboxDir } from "../runtime/state.js";
import { removeTree } from "../resource/mounts.js";
import { removeRecordedNetwork } from "../resource/network/pod-network.js";
import { unmountRootfs } from "../resource/rootfs/rootfs-mount.js";
import { commandErrorText } from "../runtime/command.js";
import { SANDBOX_ID_ANNOTATION } from "./shim-runtime.js";
import { isSocketConnectable, readAddressFile, socketPathOf } from "./address.js";
import { promises as fsp } from "node:fs";
import { writeAll } from "./fd-write.js";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DeleteResponseSchema } from "../protocols/gen/containerd/runtime/task/v2/shim_pb.js";
import type { ShimFlags } from "./flags.js";

/** Exit status reported for a task whose shim is gone (128 + SIGKILL). */
export const DELETED_EXIT_STATUS = 137;

/**
 * After a shim died: if `id` is a sandbox whose owning shim is gone, kill its
 * VM (by PID, checked against its command line) and remove its state and
 * mounts. A live owner is left alone: it serves other ids of the group.
 * Returns false when a live shim still owns the task (then nothing is touched).
 */
async function cleanupSandbox(id: string, bundle: string): Promise<boolean> {
  let stateDir = "/run/hako";
  try {
    stateDir = loadConfig().runtime.state_dir;
  } catch {
    /* a broken config must not stop cleanup: use the default state dir */
  }
  let sid = id;
  try {
    const spec = JSON.parse(await fsp.readFile(path.join(bundle, "config.json"), "utf8")) as { annotations?: Record<string, string> };
    sid = spec.annotations?.[SANDBOX_ID_ANNOTATION] ?? id;
  } catch {
    /* no config.json: the id is its own sandbox */
  }
  const sbDir = sandboxDir(stateDir, sid);
  const st = readState(sbDir);
  if (st && pidMatches(st.ownerPid, "hako")) return false;
  if (sid !== id || !st) return true;
  await killRecordedVmm(st.vmmPid);
  // The taps and filters the dead shim's sandbox put into the pod netns (a netns
  // CRI already deleted counts as clean). On failure the state stays for a retry.
  await removeRecordedNetwork(st.network);
  await removeTree(id, sbDir);
  return true;
}

/**
 * Releases what a task may hold after its shim went away: its sandbox (when no
 * live shim owns it), the dead shim's socket, the bundle's rootfs mount. Never
 * throws; problems become one-line warnings on stderr, which containerd logs
 * as "cleanup warnings".
 */
export async function cleanupAfterShim(id: string, bundle: string, namespace: string): Promise<void> {
  const warnings: string[] = [];
  try {
    if (!(await cleanupSandbox(id, bundle))) return;
  } catch (err) {
    warnings.push(`hako: ${namespace}/${id}: sandbox cleanup failed: ${firstLine(err)}`);
  }
  // A shim that died (kill -9) leaves its socket; nobody serves it any more.
  try {
    const address = await readAddressFile(bundle);
    if (address !== "" && !(await isSocketConnectable(address))) await fsp.rm(socketPathOf(address), { force: true });
  } catch {
    /* no address file: the shim never started */
  }
  try {
    await unmountRootfs(id, bundle);
  } catch (err) {
    warnings.push(`hako: ${namespace}/${id}: unmounting the rootfs failed: ${firstLine(err)}`);
  }
  for (const w of warnings) process.stderr.write(`${w}\n`);
}

function firstLine(err: unknown): string {
  return commandErrorText(err).split("\n")[0] ?? "";
}

/** The raw DeleteResponse{pid: 0, exit_status: 137, exited_at: now} the command prints. */
export function deleteResponseBytes(nowMs: number = Date.now()): Uint8Array {
  return toBinary(
    DeleteResponseSchema,
    create(DeleteResponseSchema, { pid: 0, exitStatus: DELETED_EXIT_STATUS, exitedAt: timestampFromMs(nowMs) }),
  );
}

/** Runs the `delete` command; returns the process exit code. */
export async function runDelete(flags: ShimFlags): Promise<number> {
  try {
    await cleanupAfterShim(flags.id, flags.bundle, flags.namespace);
  } catch (err) {
    process.stderr.write(`hako: ${flags.namespace}/${flags.id}: cleanup failed: ${firstLine(err)}\n`);
  }
  writeAll(1, deleteResponseBytes());
  return 0;
}

