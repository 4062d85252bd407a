// Where hako finds its installed files and keeps its runtime state.
import { existsSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The directory of a module: for a bundled program its file's directory,
 * `<prefix>/lib/hako`, also when the code sits in a shared chunk
 * (`lib/hako/chunks/`, see scripts/build.mjs); in the source tree, the source file's.
 */
export function moduleDir(moduleUrl: string): string {
  const here = dirname(fileURLToPath(moduleUrl));
  return here.endsWith("/lib/hako/chunks") ? dirname(here) : here;
}

/**
 * The data directory holding the default configuration.toml and the guest
 * assets: `<prefix>/share/hako`. Bundled programs live in `<prefix>/lib/hako/`,
 * so it is `../../share/hako` from them. When run from the source tree
 * (src/...), the repository's `build/share/hako` is used.
 */
export function dataDir(): string {
  const fromEnv = process.env.HAKO_DATA_DIR;
  if (fromEnv) return resolve(fromEnv);
  const here = moduleDir(import.meta.url);
  const srcIdx = here.lastIndexOf(`${"/"}src${"/"}`);
  if (srcIdx >= 0 || here.endsWith("/src")) {
    const repo = here.slice(0, srcIdx >= 0 ? srcIdx : here.length - 4);
    return join(repo, "build", "share", "hako");
  }
  return resolve(here, "..", "..", "share", "hako");
}

/** The directory holding the bundled programs (hako.js, hako-agent.js, ...). */
export function libDir(): string {
  return resolve(dataDir(), "..", "..", "lib", "hako");
}

/** hako-ksm-exec (src/resource/ksm-exec.c), next to the bundled programs. */
export function ksmExecPath(): string {
  return join(libDir(), "hako-ksm-exec");
}

export const SYSTEM_CONFIG_PATH = "/etc/hako/configuration.toml";

export function defaultConfigPath(): string {
  return join(dataDir(), "configuration.toml");
}

/** Resolves an asset path from the configuration: relative paths are relative to the data dir. */
export function assetPath(p: string): string {
  if (p === "") return "";
  return p.startsWith("/") ? p : join(dataDir(), p);
}

export function fileExists(p: string): boolean {
  return p !== "" && existsSync(p);
}

/**
 * A file as it is now, for keys of things built or learned from it (a
 * template, the accelerator probe's answer): a rebuilt kernel or an upgraded
 * QEMU is another file at the same path. A missing file is part of the key.
 */
export function fileStamp(path: string): string {
  try {
    const st = statSync(path);
    return `${path}:${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return `${path}:absent`;
  }
}
