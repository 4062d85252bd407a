// `hako image build`: guest kernel(s) + root filesystem into <data dir>/guest.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { buildGuestImage } from "../image/builder.js";
import type { KernelFlavor, RootfsFormat } from "../image/manifest.js";
import { ImageError } from "../runtime/errors.js";
import { dataDir, libDir } from "../runtime/paths.js";

/** Without --kernel: the kernels the existing image has (so a plain rebuild keeps a minimal kernel), else generic. */
function defaultKernels(outDir: string): KernelFlavor[] {
  try {
    const m = JSON.parse(readFileSync(join(outDir, "manifest.json"), "utf8")) as { kernels?: Record<string, unknown> };
    const have = Object.keys(m.kernels ?? {}).filter((k): k is KernelFlavor => k === "generic" || k === "minimal");
    return have.includes("generic") ? have : ["generic", ...have];
  } catch {
    return ["generic"];
  }
}

export async function imageBuild(o: { kernel?: string; format: string; out?: string; force?: boolean }): Promise<void> {
  const outDir = resolve(o.out ?? join(dataDir(), "guest"));
  const kernels: KernelFlavor[] =
    o.kernel === undefined ? defaultKernels(outDir) : o.kernel === "both" ? ["generic", "minimal"] : o.kernel === "generic" || o.kernel === "minimal" ? [o.kernel] : [];
  if (kernels.length === 0) throw new ImageError(`--kernel must be generic, minimal or both, not ${o.kernel}`);
  if (o.format !== "initrd" && o.format !== "erofs") throw new ImageError(`--format must be initrd or erofs, not ${o.format}`);
  const agentBundle = join(libDir(), "hako-agent.js");
  const nodePtyDir = join(libDir(), "node_modules", "node-pty");
  if (!existsSync(agentBundle)) throw new ImageError(`agent bundle ${agentBundle} not found`, { hint: "run `make build` first" });
  const started = Date.now();
  await buildGuestImage({ outDir, kernels, rootfsFormat: o.format as RootfsFormat, agentBundle, nodePtyDir, force: !!o.force });
  process.stderr.write(`guest image ready in ${outDir} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
}
