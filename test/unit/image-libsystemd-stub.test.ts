// The guest's libsystemd stub for crun (src/image/libsystemd-stub.ts): built
// with binutils from the host's own crun, and crun runs with it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildLibsystemdStub, parseSystemdImports, stubAssembly, stubVersionScript } from "../../src/image/libsystemd-stub.js";

const NM = [
  "                 U sd_bus_call@LIBSYSTEMD_221",
  "                 U sd_notify@LIBSYSTEMD_209",
  "                 U sd_notify_barrier@LIBSYSTEMD_246",
  "                 U strlen@GLIBC_2.2.5",
  "                 w __gmon_start__",
].join("\n");

test("the stub imports only sd_* symbols, with their versions; sd_notify answers 0, the rest trap", () => {
  const syms = parseSystemdImports(NM);
  assert.deepEqual(syms, [
    { name: "sd_bus_call", version: "LIBSYSTEMD_221" },
    { name: "sd_notify", version: "LIBSYSTEMD_209" },
    { name: "sd_notify_barrier", version: "LIBSYSTEMD_246" },
  ]);
  const asm = stubAssembly(syms);
  assert.match(asm, /sd_bus_call:\n {2}ud2/);
  assert.match(asm, /sd_notify:\n {2}xorl %eax,%eax\n {2}ret/);
  // Oldest version first, each node inheriting the one before; only the first hides the rest.
  assert.equal(
    stubVersionScript(syms),
    "LIBSYSTEMD_209 {\n  global:\n    sd_notify;\n  local: *;\n};\n" +
      "LIBSYSTEMD_221 {\n  global:\n    sd_bus_call;\n} LIBSYSTEMD_209;\n" +
      "LIBSYSTEMD_246 {\n  global:\n    sd_notify_barrier;\n} LIBSYSTEMD_221;\n",
  );
});

const crun = ["/usr/bin/crun", "/usr/sbin/crun"].find(existsSync);
test("built for this host's crun: crun loads the stub instead of libsystemd (and none of libsystemd's own libraries) and runs", { skip: !crun && "no crun" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "hako-test-stub-"));
  try {
    const stub = await buildLibsystemdStub(crun!, dir);
    if (stub === undefined) return; // a crun without libsystemd needs no stub
    const env = { ...process.env, LD_LIBRARY_PATH: dir };
    const ldd = execFileSync("ldd", [crun!], { env, encoding: "utf8" });
    assert.match(ldd, new RegExp(`libsystemd\\.so\\.0 => ${dir}/libsystemd\\.so\\.0`));
    assert.doesNotMatch(ldd, /libgcrypt|libzstd|liblzma|liblz4/);
    assert.match(execFileSync(crun!, ["--version"], { env, encoding: "utf8" }), /^crun version /);
    // Every versioned import of crun is defined by the stub.
    const defined = execFileSync("nm", ["-D", "--defined-only", stub], { encoding: "utf8" });
    for (const { name, version } of parseSystemdImports(execFileSync("nm", ["-D", "--undefined-only", crun!], { encoding: "utf8" })))
      assert.match(defined, new RegExp(`\\b${name}@@?${version}\\b`), `${name}@${version}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
