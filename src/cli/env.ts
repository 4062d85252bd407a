// `hako env`: the effective configuration, paths and versions.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { dataDir, libDir } from "../runtime/paths.js";
import { AGENT_VERSION } from "../agent/version.js";
import { setup, type GlobalOptions } from "./common.js";

function versionOf(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split("\n")[0]!.trim();
  } catch {
    return "not found";
  }
}

export function collectEnv(opts: GlobalOptions): Record<string, unknown> {
  const { cfg } = setup(opts);
  const manifestPath = join(dataDir(), "guest", "manifest.json");
  const manifest: unknown = existsSync(manifestPath) ? JSON.parse(readFileSync(manifestPath, "utf8")) : null;
  return {
    version: AGENT_VERSION,
    configFile: cfg.source || "(built-in defaults)",
    dataDir: dataDir(),
    libDir: libDir(),
    config: { hypervisor: cfg.hypervisor, agent: cfg.agent, runtime: cfg.runtime, factory: cfg.factory },
    host: {
      node: process.version,
      kernel: versionOf("uname", ["-r"]),
      qemu: versionOf(cfg.hypervisor.qemu.path, ["--version"]),
      containerd: versionOf("containerd", ["--version"]),
    },
    guest: manifest,
  };
}

function flatten(prefix: string, v: unknown, out: string[]): void {
  if (v && typeof v === "object" && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) flatten(prefix ? `${prefix}.${k}` : k, x, out);
  } else out.push(`${prefix} = ${JSON.stringify(v)}`);
}

export function printEnv(opts: GlobalOptions & { json?: boolean }): void {
  const env = collectEnv(opts);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(env, null, 2)}\n`);
    return;
  }
  const lines: string[] = [];
  flatten("", env, lines);
  process.stdout.write(`${lines.join("\n")}\n`);
}
