import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import {
  SOCKET_PATH_MAX,
  isSocketConnectable,
  readAddressFile,
  readGroupId,
  shimSocketAddress,
  socketPathOf,
  writeAddressFile,
} from "../../src/shim/address.js";

let dir = "";
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "hako-shim-addr-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("shim socket address", () => {
  test("matches a hand-computed sha256 of <address>/<ns>/<group>", () => {
    // printf '%s' /run/containerd/containerd.sock/k8s.io/sandbox-abc | sha256sum
    assert.equal(
      shimSocketAddress("/run/containerd/containerd.sock", "k8s.io", "sandbox-abc", "/run/containerd/s"),
      "unix:///run/containerd/s/b67c97a769649219fa3f77169d40e2f084a55f74afda3ed88baf50450fbd79f2",
    );
    // printf '%s' /run/containerd/containerd.sock/default/c1 | sha256sum
    assert.equal(
      shimSocketAddress("/run/containerd/containerd.sock", "default", "c1", "/run/containerd/s"),
      "unix:///run/containerd/s/d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888",
    );
  });

  test("agrees with the sha256sum tool for other inputs", { skip: spawnSync("sha256sum", ["--version"]).status !== 0 }, () => {
    const key = "/x/containerd.sock/ns-1/grp_2";
    const r = spawnSync("sha256sum", { input: key, encoding: "utf8" });
    const hex = r.stdout.split(" ")[0];
    assert.equal(shimSocketAddress("/x/containerd.sock", "ns-1", "grp_2", "/d"), `unix:///d/${hex}`);
  });

  test("too long a socket path is rejected", () => {
    const longDir = `/${"d".repeat(SOCKET_PATH_MAX - 64)}`;
    assert.throws(() => shimSocketAddress("/a", "n", "g", longDir), /longer than 106/);
    assert.doesNotThrow(() => shimSocketAddress("/a", "n", "g", `/${"d".repeat(SOCKET_PATH_MAX - 66)}`));
  });

  test("socketPathOf strips unix://", () => {
    assert.equal(socketPathOf("unix:///run/x"), "/run/x");
    assert.equal(socketPathOf("/run/x"), "/run/x");
  });
});

describe("group id from config.json", () => {
  test("runc group annotation, then CRI sandbox id, then the id", async () => {
    const b = await mkdtemp(path.join(dir, "b-"));
    assert.equal(await readGroupId(b, "c1"), "c1", "no config.json");
    await writeFile(path.join(b, "config.json"), JSON.stringify({ annotations: { "io.kubernetes.cri.sandbox-id": "sb" } }));
    assert.equal(await readGroupId(b, "c1"), "sb");
    await writeFile(
      path.join(b, "config.json"),
      JSON.stringify({ annotations: { "io.kubernetes.cri.sandbox-id": "sb", "io.containerd.runc.v2.group": "g" } }),
    );
    assert.equal(await readGroupId(b, "c1"), "g");
    await writeFile(path.join(b, "config.json"), JSON.stringify({ ociVersion: "1.0.2" }));
    assert.equal(await readGroupId(b, "c1"), "c1");
    await writeFile(path.join(b, "config.json"), "{not json");
    assert.equal(await readGroupId(b, "c1"), "c1");
  });
});

describe("address file", () => {
  test("written atomically without newline, read back, no temp leftovers", async () => {
    const b = await mkdtemp(path.join(dir, "a-"));
    const addr = "unix:///run/containerd/s/0123";
    await writeAddressFile(b, addr);
    assert.equal(await readFile(path.join(b, "address"), "utf8"), addr);
    await writeAddressFile(b, `${addr}4`);
    assert.equal(await readAddressFile(b), `${addr}4`);
    assert.deepEqual(await readdir(b), ["address"]);
  });

  test("missing file is NOT_FOUND", async () => {
    const b = await mkdtemp(path.join(dir, "m-"));
    await assert.rejects(readAddressFile(b), (err: { code?: unknown }) => err.code === 5);
  });
});

describe("isSocketConnectable", () => {
  test("true while listening, false after close or for a missing socket", async () => {
    const sock = path.join(dir, "probe.sock");
    assert.equal(await isSocketConnectable(sock), false);
    const srv = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => srv.listen(sock, resolve));
    assert.equal(await isSocketConnectable(`unix://${sock}`), true);
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    assert.equal(await isSocketConnectable(sock), false);
  });
});
