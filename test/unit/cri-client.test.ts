// CriClient and `hako cri` against an in-process fake CRI server (grpc-js on
// a unix socket): field values survive the round trip (bytes, int64 past
// 2^53, enums, maps), failures become CriError, deadlines fire, JSON
// configs reject typos, and `hako cri exec` exits with the command's code.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { create, equals } from "@bufbuild/protobuf";
import {
  ContainerConfigSchema,
  ContainerState,
  MountPropagation,
  NamespaceMode,
  PodSandboxConfigSchema,
  PodSandboxState,
  Protocol,
  RuntimeService,
  type ContainerStatusRequest,
  type CreateContainerRequest,
  type ExecSyncRequest,
  type ListContainersRequest,
  type PodSandboxStatusRequest,
  type RunPodSandboxRequest,
} from "../../src/protocols/gen/cri/runtime/v1/api_pb.js";
import { CriClient, CriError, normalizeCriAddress, type ContainerConfigInit, type PodSandboxConfigInit } from "../../src/cli/cri/cri-client.js";
import { parseContainerConfig, parsePodSandboxConfig, readPodSandboxConfig } from "../../src/cli/cri/config-json.js";
import { execCommand, listContainersCommand, type CriOutput } from "../../src/cli/cri/commands.js";
import { Code } from "../../src/protocols/ttrpc/status.js";
import { ConfigError } from "../../src/runtime/errors.js";
import { FakeCriStatus, serve, startFakeCri, type FakeCri } from "../helpers/fake-cri.js";
import { TMP_PREFIX } from "../helpers/bundle.js";

/** Past Number.MAX_SAFE_INTEGER: survives only as a bigint. */
const BIG = 9_007_199_254_740_993n;
const NON_UTF8 = new Uint8Array([0x00, 0xff, 0xfe, 0x0a, 0x41]);

const podConfig: PodSandboxConfigInit = {
  metadata: { name: "web", uid: "uid-1", namespace: "default", attempt: 2 },
  hostname: "web-host",
  logDirectory: "/var/log/pods/web",
  dnsConfig: { servers: ["10.0.0.10"], searches: ["svc.cluster.local"], options: ["ndots:5"] },
  portMappings: [{ protocol: Protocol.UDP, containerPort: 53, hostPort: 5353, hostIp: "127.0.0.1" }],
  labels: { app: "web" },
  annotations: { "io.hako/test": "yes" },
  linux: {
    cgroupParent: "/kubepods/besteffort",
    securityContext: {
      namespaceOptions: { network: NamespaceMode.NODE, pid: NamespaceMode.CONTAINER, ipc: NamespaceMode.POD, targetId: "" },
      privileged: true,
      runAsUser: { value: 1000n },
      supplementalGroups: [5n, BIG],
    },
    sysctls: { "net.ipv4.ip_forward": "1" },
    overhead: { memoryLimitInBytes: 160n << 20n, cpuShares: 250n },
    resources: { memoryLimitInBytes: BIG, cpuQuota: -1n, cpuPeriod: 100_000n },
  },
};

const containerConfig: ContainerConfigInit = {
  metadata: { name: "app", attempt: 1 },
  image: { image: "docker.io/library/busybox:1.36" },
  command: ["/bin/sh", "-c"],
  args: ["sleep 1000"],
  workingDir: "/srv",
  envs: [{ key: "A", value: "1" }],
  mounts: [{ containerPath: "/data", hostPath: "/tmp/data", readonly: true, selinuxRelabel: true, propagation: MountPropagation.PROPAGATION_BIDIRECTIONAL }],
  devices: [{ containerPath: "/dev/fuse", hostPath: "/dev/fuse", permissions: "rwm" }],
  labels: { tier: "1" },
  annotations: { note: "n" },
  logPath: "app/0.log",
  stdin: true,
  stdinOnce: true,
  tty: true,
  linux: {
    resources: { cpuPeriod: 100_000n, cpuQuota: 50_000n, cpuShares: 512n, memoryLimitInBytes: 256n << 20n, oomScoreAdj: -998n, cpusetCpus: "0-1", cpusetMems: "0" },
    securityContext: { privileged: false, capabilities: { addCapabilities: ["NET_ADMIN"] }, namespaceOptions: { pid: NamespaceMode.TARGET, targetId: "c0" } },
  },
};

/** Collects what a command writes. */
function captureOutput(): CriOutput & { out: () => Buffer; err: () => Buffer } {
  const outChunks: Buffer[] = [];
  const errChunks: Buffer[] = [];
  const sink = (chunks: Buffer[]) => ({ write: (c: string | Uint8Array) => chunks.push(Buffer.from(c)) });
  return { stdout: sink(outChunks), stderr: sink(errChunks), out: () => Buffer.concat(outChunks), err: () => Buffer.concat(errChunks) };
}

async function expectCriError(p: Promise<unknown>, code: Code): Promise<CriError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof CriError, `expected CriError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${err.codeName}: ${err.message}`);
    return err;
  }
  assert.fail(`expected a CriError ${Code[code]}`);
}

describe("CriClient against a fake CRI server", () => {
  let fake: FakeCri;
  let client: CriClient;

  before(async () => {
    fake = await startFakeCri([
      serve(RuntimeService, {
        version: () => ({ version: "0.1.0", runtimeName: "fake", runtimeVersion: "1.0", runtimeApiVersion: "v1" }),
        runPodSandbox: () => ({ podSandboxId: "pod-1" }),
        podSandboxStatus: (req) => ({
          status: {
            id: req.podSandboxId,
            metadata: { name: "web", namespace: "default", uid: "uid-1", attempt: 2 },
            state: PodSandboxState.SANDBOX_NOTREADY,
            createdAt: BIG,
            network: { ip: "10.88.0.5", additionalIps: [{ ip: "fd00::5" }] },
            linux: { namespaces: { options: { network: NamespaceMode.POD, pid: NamespaceMode.CONTAINER, ipc: NamespaceMode.NODE } } },
            labels: { app: "web" },
            annotations: { a: "b" },
            runtimeHandler: "hako",
          },
          info: { info: JSON.stringify({ pid: 42 }) },
        }),
        createContainer: (req) => ({ containerId: `${req.podSandboxId}-c1` }),
        execSync: (req) => ({ stdout: NON_UTF8, stderr: new TextEncoder().encode(`ran ${req.cmd.join(" ")}`), exitCode: 7 }),
        containerStatus: (req) => {
          throw new FakeCriStatus(Code.NOT_FOUND, `an error occurred when try to find container "${req.containerId}": not found`);
        },
        stopContainer: async () => {
          await sleep(5000);
          return {};
        },
        listContainers: () => ({ containers: [{ id: "c1", podSandboxId: "pod-1", state: ContainerState.CONTAINER_RUNNING, createdAt: 1n }] }),
      }),
    ]);
    client = new CriClient(fake.address, { defaultTimeoutMs: 10_000 });
  });

  after(async () => {
    client.close();
    await fake.close();
  });

  test("Version", async () => {
    const v = await client.version();
    assert.equal(v.runtimeName, "fake");
    assert.equal(v.runtimeApiVersion, "v1");
  });

  test("RunPodSandbox sends every config field unchanged (int64 past 2^53, enums, maps)", async () => {
    const id = await client.runPodSandbox(podConfig, "hako");
    assert.equal(id, "pod-1");
    const [req] = fake.requests.get("RunPodSandbox") as RunPodSandboxRequest[];
    assert.ok(req?.config);
    assert.equal(req.runtimeHandler, "hako");
    assert.ok(equals(PodSandboxConfigSchema, req.config, create(PodSandboxConfigSchema, podConfig)));
    assert.equal(req.config.linux?.resources?.memoryLimitInBytes, BIG);
    assert.equal(req.config.linux?.resources?.cpuQuota, -1n);
    assert.deepEqual(req.config.linux?.securityContext?.supplementalGroups, [5n, BIG]);
    assert.equal(req.config.linux?.securityContext?.namespaceOptions?.network, NamespaceMode.NODE);
    assert.equal(req.config.portMappings[0]?.protocol, Protocol.UDP);
    assert.deepEqual(req.config.linux?.sysctls, { "net.ipv4.ip_forward": "1" });
  });

  test("PodSandboxStatus returns status fields and the info map", async () => {
    const r = await client.podSandboxStatus("pod-1", { verbose: true });
    const [req] = fake.requests.get("PodSandboxStatus") as PodSandboxStatusRequest[];
    assert.equal(req?.verbose, true);
    assert.equal(r.status?.id, "pod-1");
    assert.equal(r.status?.state, PodSandboxState.SANDBOX_NOTREADY);
    assert.equal(r.status?.createdAt, BIG);
    assert.equal(r.status?.network?.ip, "10.88.0.5");
    assert.equal(r.status?.network?.additionalIps[0]?.ip, "fd00::5");
    assert.equal(r.status?.linux?.namespaces?.options?.ipc, NamespaceMode.NODE);
    assert.equal(r.status?.runtimeHandler, "hako");
    assert.deepEqual(JSON.parse(r.info.info ?? "null"), { pid: 42 });
  });

  test("CreateContainer sends the container and sandbox configs unchanged", async () => {
    const cid = await client.createContainer("pod-1", containerConfig, podConfig);
    assert.equal(cid, "pod-1-c1");
    const [req] = fake.requests.get("CreateContainer") as CreateContainerRequest[];
    assert.equal(req?.podSandboxId, "pod-1");
    assert.ok(req?.config && req.sandboxConfig);
    assert.ok(equals(ContainerConfigSchema, req.config, create(ContainerConfigSchema, containerConfig)));
    assert.ok(equals(PodSandboxConfigSchema, req.sandboxConfig, create(PodSandboxConfigSchema, podConfig)));
    assert.equal(req.config.linux?.resources?.oomScoreAdj, -998n);
    assert.equal(req.config.mounts[0]?.propagation, MountPropagation.PROPAGATION_BIDIRECTIONAL);
    assert.equal(req.config.linux?.securityContext?.namespaceOptions?.targetId, "c0");
  });

  test("ExecSync returns raw bytes and the exit code; timeout travels as int64 seconds", async () => {
    const r = await client.execSync("c1", ["sh", "-c", "exit 7"], { timeoutSeconds: 30 });
    assert.deepEqual(r.stdout, NON_UTF8);
    assert.equal(new TextDecoder().decode(r.stderr), "ran sh -c exit 7");
    assert.equal(r.exitCode, 7);
    const reqs = fake.requests.get("ExecSync") as ExecSyncRequest[];
    const req = reqs[reqs.length - 1];
    assert.equal(req?.timeout, 30n);
    assert.deepEqual(req?.cmd, ["sh", "-c", "exit 7"]);
  });

  test("an error status becomes a CriError naming the RPC, the id and the code", async () => {
    const err = await expectCriError(client.containerStatus("abc123"), Code.NOT_FOUND);
    assert.equal(err.rpc, "ContainerStatus");
    assert.equal(err.id, "abc123");
    assert.equal(err.codeName, "NOT_FOUND");
    assert.equal(err.name, "CriError");
    assert.match(err.details, /not found/);
    assert.match(err.message, /^CRI ContainerStatus for container abc123 failed: NOT_FOUND: an error occurred/);
    assert.match(err.message, /hako cri ps -a/, "says what to do");
    const [req] = fake.requests.get("ContainerStatus") as ContainerStatusRequest[];
    assert.equal(req?.containerId, "abc123");
  });

  test("an RPC the server lacks is UNIMPLEMENTED", async () => {
    const err = await expectCriError(client.listImages(), Code.UNIMPLEMENTED);
    assert.equal(err.rpc, "ListImages");
    assert.match(err.message, /CRI plugin/);
  });

  test("the per-call deadline fires", async () => {
    const started = Date.now();
    const err = await expectCriError(client.stopContainer("c1", 0, { timeoutMs: 300 }), Code.DEADLINE_EXCEEDED);
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 250 && elapsed < 3000, `deadline after ${elapsed} ms`);
    assert.match(err.message, /StopContainer for container c1/);
    assert.match(err.message, /raise --timeout/);
  });

  test("an aborted call fails with CANCELLED", async () => {
    const abort = new AbortController();
    const p = client.stopContainer("c1", 0, { signal: abort.signal });
    setTimeout(() => abort.abort(), 50);
    await expectCriError(p, Code.CANCELLED);
  });

  test("hako cri exec writes the output and returns the command's exit code", async () => {
    const io = captureOutput();
    const code = await execCommand(client, "c1", ["false"], 0, io);
    assert.equal(code, 7);
    assert.deepEqual(new Uint8Array(io.out()), NON_UTF8);
    assert.equal(io.err().toString(), "ran false");
  });

  test("hako cri ps asks for running containers only unless -a", async () => {
    const io = captureOutput();
    await listContainersCommand(client, { quiet: true }, io);
    await listContainersCommand(client, { quiet: true, all: true, pod: "pod-1" }, io);
    assert.equal(io.out().toString(), "c1\nc1\n");
    const [running, all] = fake.requests.get("ListContainers") as ListContainersRequest[];
    assert.equal(running?.filter?.state?.state, ContainerState.CONTAINER_RUNNING);
    assert.equal(all?.filter?.state, undefined);
    assert.equal(all?.filter?.podSandboxId, "pod-1");
  });

  test("the hako CLI exits with the exec'd command's exit code", async () => {
    const main = join(import.meta.dirname, "..", "..", "src", "cli", "main.ts");
    const args = ["--import", "tsx", main, "cri", "--address", fake.address, "--timeout", "20s", "exec", "c1", "--timeout", "9", "--", "sh", "-c", "exit 7"];
    const result = await new Promise<{ code: number | null; stdout: Buffer; stderr: string }>((resolve) => {
      execFile(process.execPath, args, { encoding: "buffer", timeout: 60_000 }, (err, stdout, stderr) => {
        const code = err && typeof err.code === "number" ? err.code : err ? null : 0;
        resolve({ code, stdout, stderr: stderr.toString() });
      });
    });
    assert.equal(result.code, 7, `stderr: ${result.stderr}`);
    assert.deepEqual(new Uint8Array(result.stdout), NON_UTF8);
    assert.equal(result.stderr, "ran sh -c exit 7");
    const reqs = fake.requests.get("ExecSync") as ExecSyncRequest[];
    assert.equal(reqs[reqs.length - 1]?.timeout, 9n, "exec's own --timeout goes into the request");
  });
});

describe("CriClient without a server", () => {
  test("an absent socket is UNAVAILABLE with a hint about the address", async () => {
    const dir = await mkdtemp(join(tmpdir(), `${TMP_PREFIX}cri-`));
    const client = new CriClient(join(dir, "none.sock"), { defaultTimeoutMs: 5000 });
    try {
      assert.equal(client.address, `unix://${join(dir, "none.sock")}`);
      const err = await expectCriError(client.version(), Code.UNAVAILABLE);
      assert.match(err.message, /CONTAINER_RUNTIME_ENDPOINT/);
      assert.doesNotMatch(err.message, /Resolution note/);
    } finally {
      client.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("addresses: bare paths get unix://, others pass", () => {
    assert.equal(normalizeCriAddress("/run/containerd/containerd.sock"), "unix:///run/containerd/containerd.sock");
    assert.equal(normalizeCriAddress("unix:///a.sock"), "unix:///a.sock");
    assert.equal(normalizeCriAddress("localhost:1234"), "localhost:1234");
  });
});

describe("config JSON", () => {
  test("accepts camelCase and .proto names, enum names and int64 strings", () => {
    const pod = parsePodSandboxConfig(
      JSON.stringify({
        metadata: { name: "p", namespace: "default", attempt: 1 },
        log_directory: "/tmp/logs",
        linux: { securityContext: { namespace_options: { network: "NODE", pid: "CONTAINER" } }, overhead: { memory_limit_in_bytes: "9007199254740993" } },
      }),
    );
    assert.equal(pod.logDirectory, "/tmp/logs");
    assert.equal(pod.linux?.securityContext?.namespaceOptions?.network, NamespaceMode.NODE);
    assert.equal(pod.linux?.overhead?.memoryLimitInBytes, BIG);
    const ctr = parseContainerConfig(JSON.stringify({ metadata: { name: "c" }, image: { image: "busybox" }, command: ["sleep", "1"], mounts: [{ container_path: "/d", propagation: "PROPAGATION_HOST_TO_CONTAINER" }] }));
    assert.deepEqual(ctr.command, ["sleep", "1"]);
    assert.equal(ctr.mounts[0]?.propagation, MountPropagation.PROPAGATION_HOST_TO_CONTAINER);
  });

  test("rejects an unknown field, naming it and the file", () => {
    assert.throws(
      () => parsePodSandboxConfig(JSON.stringify({ metadata: { name: "p" }, hostnam: "typo" }), "pod.json"),
      (err: unknown) => err instanceof ConfigError && /pod\.json/.test(err.message) && /hostnam/.test(err.message) && /runtime\.v1\.PodSandboxConfig/.test(err.message),
    );
    assert.throws(() => parseContainerConfig(JSON.stringify({ linux: { resources: { memory_limit: 1 } } })), /memory_limit/);
  });

  test("rejects invalid JSON and non-objects", () => {
    assert.throws(() => parsePodSandboxConfig("{", "p.json"), (err: unknown) => err instanceof ConfigError && /p\.json: not valid JSON/.test(err.message));
    assert.throws(() => parsePodSandboxConfig("[]"), ConfigError);
  });

  test("reads config files", async () => {
    const dir = await mkdtemp(join(tmpdir(), `${TMP_PREFIX}cri-`));
    try {
      const file = join(dir, "pod.json");
      await writeFile(file, JSON.stringify({ metadata: { name: "f" } }));
      assert.equal(readPodSandboxConfig(file).metadata?.name, "f");
      assert.throws(() => readPodSandboxConfig(join(dir, "missing.json")), /cannot read/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
