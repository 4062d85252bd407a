// The guest's read-only image beside the initrd (src/image/rootfs-tree.ts
// stageNodeImageTree): node, stripped, and crun as it is. crun must be on a
// read-only filesystem in the guest, or every call copies it into a memfd
// (the CRI suite checks that in a running VM).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stageNodeImageTree } from "../../src/image/rootfs-tree.js";

const crun = ["/usr/bin/crun", "/usr/sbin/crun"].find(existsSync);

test("the node image's tree holds node (stripped) and crun (unchanged), both executable", { skip: !crun && "no crun on this host" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-node-image-"));
  try {
    const tree = join(dir, "tree");
    await stageNodeImageTree(tree, process.execPath, crun!);
    for (const name of ["node", "crun"]) {
      const st = statSync(join(tree, name));
      assert.ok(st.isFile() && (st.mode & 0o111) === 0o111, `${name} is an executable file`);
    }
    assert.ok(statSync(join(tree, "node")).size < statSync(process.execPath).size, "node is stripped");
    assert.deepEqual(readFileSync(join(tree, "crun")), readFileSync(crun!), "crun is copied as it is");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
