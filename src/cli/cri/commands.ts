// `hako cri …`: crictl-like commands over CriClient, for developers and tests
// on machines without crictl. Each command is a function of a client, its
// arguments and an output pair, so tests can call it directly; the commander
// wiring at the bottom only parses flags and opens the client.
import { Command, Option } from "commander";
import {
  ContainerSchema,
  ContainerState,
  ContainerStatsSchema,
  ContainerStatusSchema,
  ImageSchema,
  PodSandboxSchema,
  PodSandboxState,
  PodSandboxStatusSchema,
  type ContainerStats,
} from "../../protocols/gen/cri/runtime/v1/api_pb.js";
import { ConfigError } from "../../runtime/errors.js";
import { CriClient, DEFAULT_CRI_ADDRESS, DEFAULT_CRI_TIMEOUT_MS } from "./cri-client.js";
import { readContainerConfig, readPodSandboxConfig } from "./config-json.js";
import { ago, formatTable, humanBytes, inspectJson, messageJson, parseDurationMs, shortId, splitRepoTag } from "./format.js";

/** Where command output goes (process.stdout/stderr, or buffers in tests). */
export interface CriOutput {
  stdout: { write(chunk: string | Uint8Array): unknown };
  stderr: { write(chunk: string | Uint8Array): unknown };
}

export interface ListOptions {
  quiet?: boolean;
  json?: boolean;
  noTrunc?: boolean;
}

const lines = (items: string[]): string => (items.length ? `${items.join("\n")}\n` : "");
const json = (value: unknown): string => `${JSON.stringify(value, null, 2)}\n`;

// ------------------------------------------------------------ runtime

export async function versionCommand(client: CriClient, out: CriOutput): Promise<void> {
  const v = await client.version();
  out.stdout.write(
    `Version:  ${v.version}\nRuntimeName:  ${v.runtimeName}\nRuntimeVersion:  ${v.runtimeVersion}\nRuntimeApiVersion:  ${v.runtimeApiVersion}\n`,
  );
}

/** Status with verbose info, crictl's `info` layout. */
export async function infoCommand(client: CriClient, out: CriOutput): Promise<void> {
  const r = await client.status(true);
  const conditions = (r.status?.conditions ?? []).map((c) => ({ type: c.type, status: c.status, reason: c.reason, message: c.message }));
  out.stdout.write(inspectJson({ conditions }, r.info));
}

// ------------------------------------------------------------ pods

export async function runPodCommand(client: CriClient, configFile: string, runtimeHandler: string, out: CriOutput): Promise<void> {
  const config = readPodSandboxConfig(configFile);
  out.stdout.write(`${await client.runPodSandbox(config, runtimeHandler)}\n`);
}

export async function stopPodsCommand(client: CriClient, podIds: string[], out: CriOutput): Promise<void> {
  for (const id of podIds) {
    await client.stopPodSandbox(id);
    out.stdout.write(`Stopped sandbox ${id}\n`);
  }
}

export async function removePodsCommand(client: CriClient, podIds: string[], out: CriOutput): Promise<void> {
  for (const id of podIds) {
    await client.removePodSandbox(id);
    out.stdout.write(`Removed sandbox ${id}\n`);
  }
}

export async function inspectPodCommand(client: CriClient, podId: string, out: CriOutput): Promise<void> {
  const r = await client.podSandboxStatus(podId, { verbose: true });
  out.stdout.write(inspectJson(r.status ? messageJson(PodSandboxStatusSchema, r.status) : undefined, r.info));
}

export async function listPodsCommand(client: CriClient, opts: ListOptions, out: CriOutput): Promise<void> {
  const pods = await client.listPodSandbox();
  pods.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
  if (opts.json) return void out.stdout.write(json({ items: pods.map((p) => messageJson(PodSandboxSchema, p)) }));
  if (opts.quiet) return void out.stdout.write(lines(pods.map((p) => p.id)));
  const rows = pods.map((p) => [
    shortId(p.id, opts.noTrunc),
    ago(p.createdAt),
    p.state === PodSandboxState.SANDBOX_READY ? "Ready" : "NotReady",
    p.metadata?.name ?? "",
    p.metadata?.namespace ?? "",
    String(p.metadata?.attempt ?? 0),
    p.runtimeHandler || "(default)",
  ]);
  out.stdout.write(formatTable(["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"], rows));
}

// ------------------------------------------------------------ containers

export async function createContainerCommand(
  client: CriClient,
  podId: string,
  containerConfigFile: string,
  podConfigFile: string,
  out: CriOutput,
): Promise<void> {
  const config = readContainerConfig(containerConfigFile);
  const podConfig = readPodSandboxConfig(podConfigFile);
  out.stdout.write(`${await client.createContainer(podId, config, podConfig)}\n`);
}

export async function startContainersCommand(client: CriClient, ids: string[], out: CriOutput): Promise<void> {
  for (const id of ids) {
    await client.startContainer(id);
    out.stdout.write(`${id}\n`);
  }
}

export async function stopContainersCommand(client: CriClient, ids: string[], timeoutSeconds: number, out: CriOutput): Promise<void> {
  for (const id of ids) {
    await client.stopContainer(id, timeoutSeconds);
    out.stdout.write(`${id}\n`);
  }
}

export async function removeContainersCommand(client: CriClient, ids: string[], out: CriOutput): Promise<void> {
  for (const id of ids) {
    await client.removeContainer(id);
    out.stdout.write(`${id}\n`);
  }
}

export async function listContainersCommand(
  client: CriClient,
  opts: ListOptions & { all?: boolean; pod?: string },
  out: CriOutput,
): Promise<void> {
  const containers = await client.listContainers({
    podSandboxId: opts.pod ?? "",
    state: opts.all ? undefined : { state: ContainerState.CONTAINER_RUNNING },
  });
  containers.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
  if (opts.json) return void out.stdout.write(json({ containers: containers.map((c) => messageJson(ContainerSchema, c)) }));
  if (opts.quiet) return void out.stdout.write(lines(containers.map((c) => c.id)));
  const rows = containers.map((c) => [
    shortId(c.id, opts.noTrunc),
    opts.noTrunc ? c.imageRef : shortId(c.imageRef),
    ago(c.createdAt),
    containerStateName(c.state),
    c.metadata?.name ?? "",
    String(c.metadata?.attempt ?? 0),
    shortId(c.podSandboxId, opts.noTrunc),
  ]);
  out.stdout.write(formatTable(["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"], rows));
}

export async function inspectContainerCommand(client: CriClient, id: string, out: CriOutput): Promise<void> {
  const r = await client.containerStatus(id, { verbose: true });
  out.stdout.write(inspectJson(r.status ? messageJson(ContainerStatusSchema, r.status) : undefined, r.info));
}

/**
 * ExecSync: writes the command's stdout and stderr and returns its exit code
 * (the caller exits with it). RPC failures throw CriError instead.
 */
export async function execCommand(client: CriClient, id: string, cmd: string[], timeoutSeconds: number, out: CriOutput): Promise<number> {
  if (cmd.length === 0) throw new ConfigError("exec needs a command", { hint: "hako cri exec <container> -- <cmd> [args...]" });
  const r = await client.execSync(id, cmd, { timeoutSeconds });
  if (r.stdout.length) out.stdout.write(r.stdout);
  if (r.stderr.length) out.stderr.write(r.stderr);
  return r.exitCode;
}

export async function statsCommand(client: CriClient, id: string | undefined, opts: { json?: boolean }, out: CriOutput): Promise<void> {
  const stats = await client.listContainerStats(id ? { id } : undefined);
  if (opts.json) return void out.stdout.write(json({ stats: stats.map((s) => messageJson(ContainerStatsSchema, s)) }));
  const rows = stats.map((s) => [
    shortId(s.attributes?.id ?? ""),
    s.attributes?.metadata?.name ?? "",
    cpuPercent(s),
    s.memory?.workingSetBytes ? humanBytes(s.memory.workingSetBytes.value) : "-",
    s.writableLayer?.usedBytes ? humanBytes(s.writableLayer.usedBytes.value) : "-",
    s.writableLayer?.inodesUsed ? String(s.writableLayer.inodesUsed.value) : "-",
  ]);
  out.stdout.write(formatTable(["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], rows));
}

// ------------------------------------------------------------ images

export async function listImagesCommand(client: CriClient, opts: ListOptions, out: CriOutput): Promise<void> {
  const images = await client.listImages();
  if (opts.json) return void out.stdout.write(json({ images: images.map((i) => messageJson(ImageSchema, i)) }));
  if (opts.quiet) return void out.stdout.write(lines(images.map((i) => i.id)));
  const rows: string[][] = [];
  for (const image of images) {
    const refs = image.repoTags.length ? image.repoTags : image.repoDigests.length ? image.repoDigests : ["<none>"];
    for (const ref of refs) {
      const [repo, tag] = splitRepoTag(ref);
      rows.push([repo, tag, shortId(image.id, opts.noTrunc), humanBytes(image.size)]);
    }
  }
  out.stdout.write(formatTable(["IMAGE", "TAG", "IMAGE ID", "SIZE"], rows));
}

export async function pullImageCommand(client: CriClient, image: string, out: CriOutput): Promise<void> {
  out.stdout.write(`Image is up to date for ${await client.pullImage(image)}\n`);
}

export async function removeImagesCommand(client: CriClient, images: string[], out: CriOutput): Promise<void> {
  for (const image of images) {
    await client.removeImage(image);
    out.stdout.write(`Deleted: ${image}\n`);
  }
}

function containerStateName(state: ContainerState): string {
  switch (state) {
    case ContainerState.CONTAINER_CREATED:
      return "Created";
    case ContainerState.CONTAINER_RUNNING:
      return "Running";
    case ContainerState.CONTAINER_EXITED:
      return "Exited";
    default:
      return "Unknown";
  }
}

/** usage_nano_cores is CPU-ns per second: 1e9 = one full core = 100 %. */
function cpuPercent(s: ContainerStats): string {
  const nanoCores = s.cpu?.usageNanoCores?.value;
  return nanoCores === undefined ? "-" : (Number(nanoCores) / 1e7).toFixed(2);
}

// ------------------------------------------------------------ wiring

interface CriGlobals {
  address: string;
  timeout: string;
}

/** Non-negative whole seconds from a flag. */
function seconds(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new ConfigError(`${flag} must be a whole number of seconds, not "${text}"`);
  return n;
}

/**
 * Adds `hako cri …` to `program`. `guarded` runs an action, printing errors
 * and setting exit status 125 on failure (src/cli/main.ts).
 */
export function registerCriCommands(program: Command, guarded: (fn: () => Promise<void>) => Promise<void>): void {
  const cri = program
    .command("cri")
    .description("talk to a CRI v1 runtime (containerd) like crictl: pods, containers, exec, images")
    .addOption(new Option("--address <endpoint>", "CRI endpoint").env("CONTAINER_RUNTIME_ENDPOINT").default(DEFAULT_CRI_ADDRESS))
    .option("--timeout <duration>", "deadline of each RPC (e.g. 30s, 2m)", `${DEFAULT_CRI_TIMEOUT_MS / 1000}s`)
    .enablePositionalOptions();
  const out: CriOutput = { stdout: process.stdout, stderr: process.stderr };

  /** Runs `fn` with a client for the cri-level flags, closing it afterwards. */
  const withClient = (fn: (client: CriClient) => Promise<void>): Promise<void> =>
    guarded(async () => {
      const g = cri.opts<CriGlobals>();
      const client = new CriClient(g.address, { defaultTimeoutMs: parseDurationMs(g.timeout) });
      try {
        await fn(client);
      } finally {
        client.close();
      }
    });
  const listFlags = (c: Command): Command =>
    c.option("-q, --quiet", "print only ids").option("--json", "print protobuf JSON").option("--no-trunc", "print full ids");
  const listOpts = (o: { quiet?: boolean; json?: boolean; trunc?: boolean }): ListOptions => ({
    quiet: o.quiet,
    json: o.json,
    noTrunc: o.trunc === false,
  });

  cri.command("version").description("runtime name and versions").action(() => withClient((c) => versionCommand(c, out)));
  cri.command("info").description("runtime conditions and config (Status, verbose)").action(() => withClient((c) => infoCommand(c, out)));

  cri
    .command("runp")
    .description("run a pod sandbox from a PodSandboxConfig JSON file; prints its id")
    .option("--runtime <handler>", "runtime handler (containerd runtime name); default: the runtime's default", "")
    .argument("<pod-config.json>")
    .action((file: string, o: { runtime: string }) => withClient((c) => runPodCommand(c, file, o.runtime, out)));
  cri
    .command("stopp")
    .description("stop pod sandboxes")
    .argument("<pod-id...>")
    .action((ids: string[]) => withClient((c) => stopPodsCommand(c, ids, out)));
  cri
    .command("rmp")
    .description("remove pod sandboxes")
    .argument("<pod-id...>")
    .action((ids: string[]) => withClient((c) => removePodsCommand(c, ids, out)));
  cri
    .command("inspectp")
    .description("pod sandbox status and runtime info as JSON")
    .argument("<pod-id>")
    .action((id: string) => withClient((c) => inspectPodCommand(c, id, out)));
  listFlags(cri.command("pods").description("list pod sandboxes")).action((o: { quiet?: boolean; json?: boolean; trunc?: boolean }) =>
    withClient((c) => listPodsCommand(c, listOpts(o), out)),
  );

  cri
    .command("create")
    .description("create a container in a pod from ContainerConfig and PodSandboxConfig JSON files; prints its id")
    .argument("<pod-id>")
    .argument("<container-config.json>")
    .argument("<pod-config.json>")
    .action((pod: string, containerFile: string, podFile: string) =>
      withClient((c) => createContainerCommand(c, pod, containerFile, podFile, out)),
    );
  cri
    .command("start")
    .description("start created containers")
    .argument("<container-id...>")
    .action((ids: string[]) => withClient((c) => startContainersCommand(c, ids, out)));
  cri
    .command("stop")
    .description("stop running containers")
    .option("--timeout <seconds>", "seconds between the stop signal and SIGKILL (0: kill at once, as crictl)", "0")
    .argument("<container-id...>")
    .action((ids: string[], o: { timeout: string }) => withClient((c) => stopContainersCommand(c, ids, seconds(o.timeout, "--timeout"), out)));
  cri
    .command("rm")
    .description("remove containers")
    .argument("<container-id...>")
    .action((ids: string[]) => withClient((c) => removeContainersCommand(c, ids, out)));
  listFlags(cri.command("ps").description("list containers (running ones unless -a)"))
    .option("-a, --all", "include created and exited containers")
    .option("--pod <pod-id>", "only containers of this pod")
    .action((o: { quiet?: boolean; json?: boolean; trunc?: boolean; all?: boolean; pod?: string }) =>
      withClient((c) => listContainersCommand(c, { ...listOpts(o), all: o.all, pod: o.pod }, out)),
    );
  cri
    .command("inspect")
    .description("container status and runtime info as JSON")
    .argument("<container-id>")
    .action((id: string) => withClient((c) => inspectContainerCommand(c, id, out)));
  cri
    .command("exec")
    .description("run a command in a container (ExecSync); exits with its exit code. Put -- before a command that has flags")
    .option("--timeout <seconds>", "kill the command after this many seconds (0: no limit)", "0")
    .argument("<container-id>")
    .argument("<cmd...>")
    .action((id: string, cmd: string[], o: { timeout: string }) =>
      withClient(async (c) => {
        process.exitCode = await execCommand(c, id, cmd, seconds(o.timeout, "--timeout"), out);
      }),
    );
  cri
    .command("stats")
    .description("container CPU, memory and disk usage")
    .option("--json", "print protobuf JSON")
    .argument("[container-id]")
    .action((id: string | undefined, o: { json?: boolean }) => withClient((c) => statsCommand(c, id, o, out)));

  listFlags(cri.command("images").description("list images")).action((o: { quiet?: boolean; json?: boolean; trunc?: boolean }) =>
    withClient((c) => listImagesCommand(c, listOpts(o), out)),
  );
  cri
    .command("pull")
    .description("pull an image")
    .argument("<image>")
    .action((image: string) => withClient((c) => pullImageCommand(c, image, out)));
  cri
    .command("rmi")
    .description("remove images")
    .argument("<image...>")
    .action((images: string[]) => withClient((c) => removeImagesCommand(c, images, out)));
}
