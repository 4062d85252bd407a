import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GUEST_POD_PID_NS, bindMountsToShare, guestSpec, loadBundle, networkNamespacePath, sharesHostPidNamespace, type OciSpec } from "../../src/runtime/oci-spec.js";
import { wantsPodPidNamespace, withPodPidNamespace } from "../../src/agent/pod-pid-namespace.js";
import { BundleError } from "../../src/runtime/errors.js";

function withBundle(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-oci-"));
  try {
    mkdirSync(join(dir, "rootfs"));
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("loadBundle resolves a relative rootfs and validates the process", () => {
  withBundle((dir) => {
    writeFileSync(join(dir, "config.json"), JSON.stringify({ process: { args: ["sh"] }, root: { path: "rootfs" } }));
    const b = loadBundle("c1", dir);
    assert.equal(b.rootfs, join(dir, "rootfs"));
  });
});

test("loadBundle rejects each broken bundle with a BundleError naming the problem", () => {
  const cases: Array<[string | undefined, RegExp]> = [
    [undefined, /has no config\.json/],
    ["{not json", /is not valid JSON/],
    ["[]", /must hold a JSON object/],
    [JSON.stringify({ root: { path: "rootfs" } }), /no process section/],
    [JSON.stringify({ process: { args: [] }, root: { path: "rootfs" } }), /process\.args is missing or empty/],
    [JSON.stringify({ process: { args: ["x"] } }), /no root\.path/],
    [JSON.stringify({ process: { args: ["x"] }, root: { path: "nope" } }), /root filesystem .*nope does not exist/],
  ];
  for (const [text, re] of cases) {
    withBundle((dir) => {
      if (text !== undefined) writeFileSync(join(dir, "config.json"), text);
      assert.throws(() => loadBundle("c1", dir), (e: Error) => e instanceof BundleError && re.test(e.message), String(re));
    });
  }
});

test("guestSpec puts root on the share, keeps per-container namespaces, drops the network one", () => {
  const spec: OciSpec = {
    process: { args: ["sh"], terminal: true, apparmorProfile: "x" },
    root: { path: "rootfs", readonly: true },
    mounts: [
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/data", type: "bind", source: "/srv/data", options: ["rbind", "ro"] },
    ],
    linux: { namespaces: [{ type: "pid" }, { type: "network", path: "/var/run/netns/x" }, { type: "mount" }, { type: "uts" }], seccomp: {} },
    hooks: { prestart: [] },
  };
  const binds = bindMountsToShare(spec);
  assert.deepEqual(binds, [{ index: 1, source: "/srv/data", readonly: true }]);
  const g = guestSpec("c1", spec, "/run/hako/shared/c1/rootfs", new Map([[1, "/run/hako/shared/c1/mounts/1"]]));
  assert.deepEqual(g.root, { path: "/run/hako/shared/c1/rootfs", readonly: true });
  assert.equal(g.process?.terminal, false);
  assert.equal(g.process?.["apparmorProfile"], undefined);
  assert.deepEqual(g.linux?.namespaces, [{ type: "pid" }, { type: "mount" }, { type: "uts" }, { type: "cgroup" }]);
  assert.equal(g.linux?.cgroupsPath, "/hako/c1");
  assert.equal(g.linux?.["seccomp"], undefined);
  assert.equal(g["hooks"], undefined);
  assert.equal(g.mounts?.find((m) => m.destination === "/data")?.source, "/run/hako/shared/c1/mounts/1");
  assert.equal(g.mounts?.[0]?.destination, "/dev", "a tmpfs /dev is added when the spec has none");
  assert.equal(spec.root?.path, "rootfs", "the input spec is not modified");
});

test("guestSpec: namespaces given by path are joined (the VM's), /dev/shm is the pod's guest shm", () => {
  const spec: OciSpec = {
    process: { args: ["sh"] },
    root: { path: "rootfs" },
    mounts: [
      { destination: "/dev/shm", type: "bind", source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/p1/shm", options: ["rbind", "ro"] },
      { destination: "/etc/hosts", type: "bind", source: "/var/lib/x/hosts", options: ["rbind", "rprivate", "rw"] },
    ],
    linux: {
      namespaces: [
        { type: "pid" },
        { type: "ipc", path: "/proc/42/ns/ipc" },
        { type: "uts", path: "/proc/42/ns/uts" },
        { type: "mount" },
        { type: "network", path: "/proc/42/ns/net" },
      ],
    },
  };
  assert.deepEqual(bindMountsToShare(spec).map((m) => m.index), [1], "/dev/shm is not shared over 9p");
  const g = guestSpec("c1", spec, "/run/hako/shared/c1/rootfs", new Map([[1, "/run/hako/shared/c1/mounts/1"]]));
  assert.deepEqual(g.linux?.namespaces, [{ type: "pid" }, { type: "mount" }, { type: "cgroup" }]);
  const shm = g.mounts?.find((m) => m.destination === "/dev/shm");
  assert.equal(shm?.source, "/run/hako/pod-shm");
  assert.equal(g.mounts?.find((m) => m.destination === "/etc/hosts")?.source, "/run/hako/shared/c1/mounts/1");
});

test("guestSpec: the sandbox's pid namespace (CRI's POD mode) becomes the pod's own in the guest, not the agent's", () => {
  const spec = (namespaces: Array<{ type: string; path?: string }>): OciSpec => ({ process: { args: ["sh"] }, root: { path: "rootfs" }, linux: { namespaces } });
  const pod = guestSpec("c1", spec([{ type: "pid", path: "/proc/42/ns/pid" }, { type: "ipc", path: "/proc/42/ns/ipc" }, { type: "mount" }]), "/r", new Map());
  assert.deepEqual(pod.linux?.namespaces, [{ type: "pid", path: GUEST_POD_PID_NS }, { type: "mount" }, { type: "cgroup" }]);
  // CONTAINER mode: a new one; NODE mode (no pid namespace): the guest's, as hostPID is the host's.
  assert.deepEqual(guestSpec("c1", spec([{ type: "pid" }]), "/r", new Map()).linux?.namespaces, [{ type: "pid" }, { type: "cgroup" }]);
  assert.deepEqual(guestSpec("c1", spec([{ type: "mount" }]), "/r", new Map()).linux?.namespaces, [{ type: "mount" }, { type: "cgroup" }]);
  // A hostPID pod (its infra container has no pid namespace): the sandbox's is the VM's own.
  assert.deepEqual(guestSpec("c1", spec([{ type: "pid", path: "/proc/42/ns/pid" }]), "/r", new Map(), { hostPid: true }).linux?.namespaces, [{ type: "cgroup" }]);
});

test("the agent puts its holder's namespace where the guest spec asks for the pod's", () => {
  const g = JSON.stringify(guestSpec("c1", { process: { args: ["sh"] }, root: { path: "rootfs" }, linux: { namespaces: [{ type: "pid", path: "/proc/42/ns/pid" }, { type: "uts" }] } }, "/r", new Map()));
  assert.ok(wantsPodPidNamespace(g));
  const out = JSON.parse(withPodPidNamespace(g, "/proc/77/ns/pid")) as OciSpec;
  assert.deepEqual(out.linux?.namespaces, [{ type: "pid", path: "/proc/77/ns/pid" }, { type: "uts" }, { type: "cgroup" }]);
  const own = JSON.stringify(guestSpec("c1", { process: { args: ["sh"] }, root: { path: "rootfs" }, linux: { namespaces: [{ type: "pid" }] } }, "/r", new Map()));
  assert.ok(!wantsPodPidNamespace(own));
  assert.equal(withPodPidNamespace("{not json", "/proc/77/ns/pid"), "{not json", "left for create to report");
});

test("networkNamespacePath: only a network namespace given by path carries a network into the VM", () => {
  const spec = (namespaces: Array<{ type: string; path?: string }> | undefined): OciSpec => ({ linux: namespaces ? { namespaces } : {} });
  assert.equal(networkNamespacePath(spec([{ type: "pid" }, { type: "network", path: "/var/run/netns/cni-1" }])), "/var/run/netns/cni-1");
  assert.equal(networkNamespacePath(spec([{ type: "network" }])), undefined);
  assert.equal(networkNamespacePath(spec([{ type: "network", path: "" }])), undefined);
  assert.equal(networkNamespacePath(spec(undefined)), undefined);
  assert.equal(networkNamespacePath({}), undefined);
});

test("loadBundle checks a network namespace path: absolute and existing", () => {
  const cfg = (path: string): string => JSON.stringify({ process: { args: ["sh"] }, root: { path: "rootfs" }, linux: { namespaces: [{ type: "network", path }] } });
  withBundle((dir) => {
    writeFileSync(join(dir, "config.json"), cfg("netns/x"));
    assert.throws(() => loadBundle("c1", dir), (e: Error) => e instanceof BundleError && /network namespace path "netns\/x" is not absolute/.test(e.message));
    writeFileSync(join(dir, "config.json"), cfg(join(dir, "no-such-netns")));
    assert.throws(() => loadBundle("c1", dir), (e: Error) => e instanceof BundleError && /network namespace .*no-such-netns \(config\.json linux\.namespaces\) does not exist.*ip netns add/.test(e.message));
    writeFileSync(join(dir, "config.json"), cfg("/proc/self/ns/net"));
    assert.equal(networkNamespacePath(loadBundle("c1", dir).spec), "/proc/self/ns/net");
  });
});

test("sharesHostPidNamespace: an infra spec without a pid namespace is hostPID", () => {
  const spec = (namespaces: Array<{ type: string; path?: string }> | undefined): OciSpec => ({ linux: namespaces ? { namespaces } : {} });
  assert.equal(sharesHostPidNamespace(spec([{ type: "pid" }, { type: "ipc" }])), false);
  assert.equal(sharesHostPidNamespace(spec([{ type: "ipc" }, { type: "network", path: "/var/run/netns/cni-1" }])), true);
  assert.equal(sharesHostPidNamespace(spec(undefined)), true);
});
