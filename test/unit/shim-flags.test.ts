import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { HakoError } from "../../src/runtime/errors.js";
import { formatShimFlags, parseShimFlags } from "../../src/shim/flags.js";

const CWD = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1";

describe("shim flags (Go flag syntax)", () => {
  test("containerd's start command line", () => {
    const f = parseShimFlags(
      ["-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock", "-publish-binary", "/usr/bin/containerd", "-id", "c1", "start"],
      CWD,
    );
    assert.equal(f.action, "start");
    assert.equal(f.namespace, "k8s.io");
    assert.equal(f.address, "/run/containerd/containerd.sock");
    assert.equal(f.publishBinary, "/usr/bin/containerd");
    assert.equal(f.id, "c1");
    assert.equal(f.bundle, CWD, "bundle defaults to cwd");
    assert.equal(f.debug, false);
    assert.deepEqual(f.rest, []);
  });

  test("delete with -bundle, -debug, double dashes and -flag=value", () => {
    const f = parseShimFlags(
      ["--namespace=default", "-address=/a.sock", "--publish-binary", "/bin/ctrd", "-id=x", "-bundle", "/b", "-debug", "delete"],
      CWD,
    );
    assert.equal(f.action, "delete");
    assert.equal(f.namespace, "default");
    assert.equal(f.address, "/a.sock");
    assert.equal(f.publishBinary, "/bin/ctrd");
    assert.equal(f.id, "x");
    assert.equal(f.bundle, "/b");
    assert.equal(f.debug, true);
  });

  test("boolean flags take no separate value; -debug=false works", () => {
    const f = parseShimFlags(["-debug=false", "-namespace", "n", "-id", "i", "serve", "extra"], CWD);
    assert.equal(f.debug, false);
    assert.equal(f.action, "serve");
    assert.deepEqual(f.rest, ["extra"]);
    const g = parseShimFlags(["-namespace", "n", "-debug", "-id", "i", "serve"], CWD);
    assert.equal(g.debug, true);
    assert.equal(g.id, "i");
  });

  test("values may start with a dash when separate; -- ends flags", () => {
    const f = parseShimFlags(["-namespace", "n", "-id", "-weird", "--", "start"], CWD);
    assert.equal(f.id, "-weird");
    assert.equal(f.action, "start");
  });

  test("-v and --version", () => {
    assert.equal(parseShimFlags(["-v"], CWD).action, "version");
    assert.equal(parseShimFlags(["--version"], CWD).action, "version");
  });

  test("usage errors are INVALID_ARGUMENT HakoErrors", () => {
    const bad: string[][] = [
      ["-namespace", "n", "-id", "i"], // no action
      ["-namespace", "n", "-id", "i", "bogus"],
      ["-namespace", "n", "-id", "i", "-nope", "start"],
      ["-namespace", "n", "-id"], // missing value
      ["-id", "i", "start"], // missing namespace
      ["-namespace", "n", "start"], // missing id
      ["-debug=maybe", "-namespace", "n", "-id", "i", "start"],
      ["---namespace", "n", "-id", "i", "start"],
    ];
    for (const argv of bad) {
      assert.throws(
        () => parseShimFlags(argv, CWD),
        (err: unknown) => err instanceof HakoError && err.code === 3,
        argv.join(" "),
      );
    }
  });

  test("formatShimFlags round-trips with -socket and the serve action", () => {
    const f = parseShimFlags(["-namespace", "k8s.io", "-address", "/s", "-publish-binary", "/c", "-id", "c1", "-debug", "start"], CWD);
    const argv = formatShimFlags({ ...f, socket: "unix:///run/containerd/s/ab" }, "serve");
    assert.equal(argv.at(-1), "serve");
    const g = parseShimFlags(argv, "/elsewhere");
    assert.deepEqual(g, { ...f, action: "serve", socket: "unix:///run/containerd/s/ab" });
  });
});
