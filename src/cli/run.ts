// `hako run --bundle DIR ID`: one OCI bundle in a fresh VM, stdio attached,
// the container's exit status returned, the VM gone afterwards.
import { resolve } from "node:path";
import { constants as osConstants } from "node:os";
import { createHypervisor } from "../hypervisor/index.js";
import { chooseAccel } from "../runtime/accel.js";
import { startAgentProxy } from "../runtime/agent-proxy.js";
import { loadBundle, networkNamespacePath } from "../runtime/oci-spec.js";
import { Sandbox } from "../runtime/sandbox.js";
import { AgentError } from "../runtime/errors.js";
import { pumpInput, pumpOutput } from "../runtime/stdio-relay.js";
import { requireGuestAssets, setup, type GlobalOptions } from "./common.js";

export interface RunOptions extends GlobalOptions {
  bundle: string;
  tty?: boolean;
}

export async function runContainer(id: string, opts: RunOptions): Promise<number> {
  const { cfg, log } = setup(opts);
  const bundle = loadBundle(id, resolve(opts.bundle));
  requireGuestAssets(cfg);
  const probe = await chooseAccel(cfg, log);
  const sandbox = new Sandbox(id, {
    config: cfg,
    hypervisor: createHypervisor(cfg, log),
    accel: probe.accel,
    logger: log.child({ sandbox: id }),
    bundle: bundle.dir,
    // A network namespace given by path (e.g. one CNI filled) is carried into the VM.
    netnsPath: networkNamespacePath(bundle.spec),
  });
  sandbox.claim();

  const ac = new AbortController();
  let gotSignal: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    gotSignal ??= sig;
    ac.abort(new Error(`interrupted by ${sig}`));
  };
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const s of signals) process.on(s, onSignal);

  const tty = !!opts.tty;
  const stdinIsTty = process.stdin.isTTY === true;
  let stopInput: (() => void) | undefined;
  let proxy: { close(): Promise<void> } | undefined;
  let rawMode = false;
  const onResize = (): void => {
    void sandbox.agent?.agent.ttyWinResize({ containerId: id, execId: "", row: process.stdout.rows ?? 24, column: process.stdout.columns ?? 80 }).catch(() => undefined);
  };
  try {
    await sandbox.start(ac.signal);
    if (ac.signal.aborted) throw ac.signal.reason;
    const agentClient = sandbox.requireAgent();
    proxy = await startAgentProxy(sandbox.dir, agentClient);
    if (tty) bundle.spec.process = { ...bundle.spec.process, consoleSize: { height: process.stdout.rows ?? 24, width: process.stdout.columns ?? 80 } };
    await sandbox.createContainer(id, bundle, tty);
    await sandbox.startContainer(id);
    log.debug({ sandbox: id, timeline: sandbox.state.timeline }, "container running");

    const agent = agentClient.agent;
    if (tty && stdinIsTty) {
      process.stdin.setRawMode(true);
      rawMode = true;
      process.stdout.on("resize", onResize);
    }
    stopInput = pumpInput(agent, id, "", process.stdin);
    // Reads fail with CANCELLED on abort or when the VM goes away; the outcome
    // is decided by WaitProcess below, so a failed read only ends its pump.
    const outputs = Promise.all([
      pumpOutput(agent, "stdout", id, "", process.stdout, ac.signal).catch((err: unknown) => log.debug({ err }, "stdout relay ended")),
      pumpOutput(agent, "stderr", id, "", process.stderr, ac.signal).catch((err: unknown) => log.debug({ err }, "stderr relay ended")),
    ]);
    const vmGone = sandbox.vm!.exited.then(() => {
      throw new AgentError(id, `the VM of ${id} exited while the container was running`, { hint: `console log was ${sandbox.consoleLog}` });
    });
    const aborted = new Promise<never>((_, reject) => ac.signal.addEventListener("abort", () => reject(ac.signal.reason), { once: true }));
    const wait = await Promise.race([agent.waitProcess({ containerId: id, execId: "" }), vmGone, aborted]);
    // Output still in flight after the exit gets a bounded time to drain.
    await Promise.race([outputs, vmGone, aborted, new Promise((r) => setTimeout(r, 30_000).unref())]);
    sandbox.mark("container_exited");
    log.debug({ sandbox: id, timeline: sandbox.state.timeline }, "container exited");
    sandbox.state.exitStatus = wait.status;
    sandbox.state.status = "stopped";
    return wait.status;
  } catch (err) {
    if (gotSignal) return 128 + (osConstants.signals[gotSignal] ?? 0);
    throw err;
  } finally {
    stopInput?.();
    process.stdin.destroy();
    process.stdout.off("resize", onResize);
    if (rawMode) process.stdin.setRawMode(false);
    await proxy?.close().catch(() => undefined);
    await sandbox.destroy();
    for (const s of signals) process.off(s, onSignal);
  }
}
