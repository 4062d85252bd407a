// Builds the programs into build/ with the installed layout:
//   build/lib/hako/{hako.mjs, containerd-shim-hako-v2.mjs, hako-agent.js, hako-ksm-exec, node_modules/node-pty}
//   build/bin/{hako, containerd-shim-hako-v2}   (wrappers)
//   build/share/hako/configuration.toml
// The guest image (build/share/hako/guest/) is built by `hako image build`.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "build");
const lib = join(out, "lib", "hako");
mkdirSync(lib, { recursive: true });
mkdirSync(join(out, "bin"), { recursive: true });
mkdirSync(join(out, "share", "hako"), { recursive: true });

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  sourcemap: false,
  logLevel: "warning",
  // @grpc/proto-loader (with protobufjs, ~1 MB) is required by grpc-js only
  // lazily, to serve its channelz/ORCA services from .proto files that a
  // bundle does not carry anyway; hako's CRI client encodes with protobuf-es.
  external: ["node-pty", "@grpc/proto-loader"],
  legalComments: "none",
};
const esmBanner = { js: "import { createRequire as __hakoCreateRequire } from 'node:module'; const require = __hakoCreateRequire(import.meta.url);" };

// Both host programs in one build with code splitting: shared code and
// lazily imported parts (`hako cri` and grpc-js) go to chunks/, so each
// program parses only what it runs.
rmSync(join(lib, "chunks"), { recursive: true, force: true });
await build({
  ...common,
  entryPoints: { hako: join(root, "src/cli/main.ts"), "containerd-shim-hako-v2": join(root, "src/shim/main.ts") },
  outdir: lib,
  outExtension: { ".js": ".mjs" },
  splitting: true,
  chunkNames: "chunks/[name]-[hash]",
  format: "esm",
  banner: esmBanner,
});

// The agent runs in the guest as CommonJS, so it needs no package.json there.
await build({ ...common, entryPoints: [join(root, "src/agent/main.ts")], outfile: join(lib, "hako-agent.js"), format: "cjs", minify: true });

// node-pty (native) next to the bundles; the image builder copies it into the guest.
const pty = join(root, "node_modules", "node-pty");
const ptyOut = join(lib, "node_modules", "node-pty");
mkdirSync(ptyOut, { recursive: true });
for (const p of ["package.json", "lib", join("build", "Release", "pty.node")]) {
  cpSync(join(pty, p), join(ptyOut, p), { recursive: true });
}

// hako-ksm-exec (src/resource/ksm-exec.c): runs QEMU and the shim with the
// kernel's process-wide KSM setting, which node cannot make itself (prctl).
try {
  execFileSync("cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", join(lib, "hako-ksm-exec"), join(root, "src", "resource", "ksm-exec.c")], { stdio: ["ignore", "inherit", "inherit"] });
} catch (err) {
  throw new Error(`cannot compile src/resource/ksm-exec.c with cc (${err.message}): install gcc and libc6-dev (\`make deps\` does)`);
}

// containerd runs the shim (start, delete) several times per pod: the launcher
// finds its directory without a subprocess unless it was called through a
// symlink or without a path.
// `ksm`: the program runs through hako-ksm-exec with its memory mergeable (the
// shim: one node per pod, and the QEMU it spawns inherits the setting unless
// [hypervisor.qemu] merge_all_memory turns it off).
const wrapper = (file, before = "", ksm = false) =>
  [
    "#!/bin/sh",
    "# hako launcher: runs the bundled program with the node on PATH.",
    "hako_here=",
    'case $0 in */*) [ -L "$0" ] || hako_here=${0%/*} ;; esac',
    '[ -n "$hako_here" ] || hako_here=$(dirname "$(readlink -f "$0")")',
    ...(before === "" ? [] : [before]),
    `exec ${ksm ? '"$hako_here/../lib/hako/hako-ksm-exec" on ' : ""}node "$hako_here/../lib/hako/${file}" "$@"`,
    "",
  ].join("\n");
// The shim's launcher answers a `start` whose pod's shim already runs without
// node (src/shim/start-fast-path.sh).
const shimFastPath = readFileSync(join(root, "src", "shim", "start-fast-path.sh"), "utf8").trimEnd();
// No V8 flags for the shim: --lite-mode (with --max-semi-space-size=1) saved
// ~3 MiB of PSS per pod, with no pod-start difference we could measure, but
// it runs everything interpreted, and the shim relays containers' output.
for (const [name, file, before, ksm] of [["hako", "hako.mjs", "", false], ["containerd-shim-hako-v2", "containerd-shim-hako-v2.mjs", shimFastPath, true]]) {
  if (!existsSync(join(lib, file))) continue;
  writeFileSync(join(out, "bin", name), wrapper(file, before, ksm));
  chmodSync(join(out, "bin", name), 0o755);
}
// The minimal kernel's config fragment, found next to the bundle (import.meta.url).
mkdirSync(join(lib, "kernel"), { recursive: true });
cpSync(join(root, "src", "image", "kernel", "minimal.config"), join(lib, "kernel", "minimal.config"));
cpSync(join(root, "config", "configuration.toml"), join(out, "share", "hako", "configuration.toml"));
console.log("built", lib);
