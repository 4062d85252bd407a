import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bindMountsToShare, guestSpec, loadBundle, networkNamespacePath, type OciSpec } from "../../src/runtime/oci-spec.js";
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
