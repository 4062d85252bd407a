// `hako`: the command-line front end.
import { Command } from "commander";
import { AGENT_VERSION } from "../agent/version.js";
import { EXIT_RUNTIME_ERROR, printError } from "./common.js";

// Each command loads its own modules when it runs (the build splits them
// into chunks): `hako run` is on the path of issue 2's start-up target and
// should not parse the image builder, the factory or the trace renderer.
const run = () => import("./run.js");
const containers = () => import("./container-commands.js");
const templates = () => import("./factory.js");

const program = new Command();
program
  .name("hako")
  .description("Run containers and Kubernetes pods in lightweight VMs")
  .version(AGENT_VERSION)
  .option("--config <file>", "configuration file (else $HAKO_CONFIG, /etc/hako/configuration.toml, the installed default)")
  .option("--debug", "debug logging to stderr")
  .enablePositionalOptions()
  .showHelpAfterError();

type Globals = { config?: string; debug?: boolean };
const globals = (): Globals => program.opts<Globals>();

function exitWith(code: number): void {
  process.exitCode = code;
}

async function guarded(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    printError(err);
    exitWith(EXIT_RUNTIME_ERROR);
  }
}

program
  .command("run")
  .description("run an OCI bundle in a fresh VM; stdio attached, exit status returned, VM removed afterwards")
  .option("-b, --bundle <dir>", "bundle directory holding config.json and the rootfs", ".")
  .option("-t, --tty", "allocate a pseudo-terminal")
  .argument("<id>", "container id")
  .action((id: string, o: { bundle: string; tty?: boolean }) => guarded(async () => exitWith(await (await run()).runContainer(id, { ...globals(), ...o }))));

program
  .command("exec")
  .description("run a process in a running container")
  .passThroughOptions()
  .option("-t, --tty", "allocate a pseudo-terminal")
  .option("--cwd <dir>", "working directory")
  .option("-e, --env <VAR=value...>", "extra environment")
  .argument("<id>")
  .argument("<command...>")
  .action((id: string, cmd: string[], o: { tty?: boolean; cwd?: string; env?: string[] }) =>
    guarded(async () => exitWith(await (await containers()).execInContainer(id, cmd, { ...globals(), ...o }))),
  );

program
  .command("kill")
  .description("send a signal to the container's init process")
  .option("-a, --all", "signal every process of the container")
  .argument("<id>")
  .argument("[signal]", "signal name or number", "TERM")
  .action((id: string, sig: string, o: { all?: boolean }) => guarded(async () => (await containers()).killContainer(id, sig, { ...globals(), ...o })));

program
  .command("state")
  .description("print the OCI state of a container as JSON")
  .argument("<id>")
  .action((id: string) => guarded(async () => void process.stdout.write(`${JSON.stringify((await containers()).containerState(id, globals()), null, 2)}\n`)));

program
  .command("list")
  .alias("ps")
  .description("list containers")
  .option("--json", "JSON output")
  .action((o: { json?: boolean }) =>
    guarded(async () => {
      const rows = (await containers()).listContainers(globals());
      if (o.json) return void process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
      process.stdout.write(["ID\tSTATUS\tPID\tCREATED\tBUNDLE", ...rows.map((r) => `${r.id}\t${r.status}\t${r.pid}\t${r.created}\t${r.bundle}`)].join("\n") + "\n");
    }),
  );

program
  .command("delete")
  .description("delete a container and every host resource it holds")
  .option("-f, --force", "stop it first if it runs")
  .argument("<id>")
  .action((id: string, o: { force?: boolean }) => guarded(async () => (await containers()).deleteContainer(id, { ...globals(), ...o })));

const factory = program.command("factory").description("VM templates that sandboxes are cloned from ([factory] enable_template)");
factory
  .command("init")
  .description("boot and save the templates for the configured VM size (with and without a NIC)")
  .option("--missing", "build only the templates that are missing or stale, and none if a build runs already (what a sandbox starts in the background)")
  .action((o: { missing?: boolean }) => guarded(async () => (await templates()).factoryInit({ ...globals(), ...o })));
factory
  .command("status")
  .description("list the templates and whether they match the current configuration and assets")
  .option("--json", "JSON output")
  .action((o: { json?: boolean }) => guarded(async () => (await templates()).factoryStatus({ ...globals(), ...o })));
factory
  .command("cache")
  .description("keep [factory] vm_cache_number warm VMs per template ready for sandboxes (runs until SIGTERM)")
  .action(() => guarded(async () => (await templates()).factoryCache(globals())));
factory
  .command("destroy")
  .description("remove every template")
  .action(() => guarded(async () => (await templates()).factoryDestroy(globals())));

program
  .command("trace")
  .description("show where the start of a sandbox (container or pod) went, phase by phase")
  .argument("<id>", "sandbox id: the id given to `hako run`, or a CRI pod's id")
  .option("--json", "JSON output")
  .option("--svg <file>", "also write the timeline as an SVG chart")
  .action((id: string, o: { json?: boolean; svg?: string }) => guarded(async () => (await import("./trace.js")).traceCommand(id, { ...globals(), ...o })));

program
  .command("check")
  .description("check that this host can run hako (exit 0 only if it can)")
  .option("--json", "JSON output")
  .action((o: { json?: boolean }) => guarded(async () => exitWith(await (await import("./check.js")).runCheck({ ...globals(), ...o }))));

program
  .command("env")
  .description("print the effective configuration, paths and versions")
  .option("--json", "JSON output")
  .action((o: { json?: boolean }) => guarded(async () => (await import("./env.js")).printEnv({ ...globals(), ...o })));

const image = program.command("image").description("guest image (kernel + root filesystem)");
image
  .command("build")
  .description("build the guest kernel and root filesystem from Debian packages, node, crun, busybox and the agent")
  .option("--kernel <kind>", "generic (Debian's 6.1), minimal (built from linux-source-6.1), or both (default: what the image has, else generic)")
  .option("--format <format>", "root filesystem: initrd or erofs", "initrd")
  .option("--out <dir>", "output directory (default: <data dir>/guest)")
  .option("--force", "rebuild even if up to date")
  .action((o: { kernel?: string; format: string; out?: string; force?: boolean }) => guarded(async () => (await import("./image.js")).imageBuild(o)));

// `hako cri …`: a crictl-like CRI v1 client (src/cli/cri). Loaded only when
// asked for: with grpc-js it is most of the CLI's code, and `hako run` should
// not pay for parsing it (the build puts it in a chunk of its own).
if (process.argv[2] === "cri") {
  const { registerCriCommands } = await import("./cri/commands.js");
  registerCriCommands(program, guarded);
} else {
  program.command("cri").description("talk to a CRI v1 runtime (containerd) like crictl: pods, containers, exec, images (hako cri --help)");
}

await program.parseAsync(process.argv);
