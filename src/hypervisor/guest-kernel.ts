// Facts about a guest kernel that shape the VM: the minimal kernel is built
// without ACPI (it finds virtio-mmio devices on the command line), while
// Debian's kernel needs ACPI to find them (its virtio_mmio is a module without
// command-line device support). The image builder's manifest.json, next to
// the kernel, says which flavour a kernel file is.
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";

interface Manifest {
  kernels?: Record<string, { path?: string } | undefined>;
}

export type KernelFlavor = "generic" | "minimal" | "unknown";

export function kernelFlavor(kernelPath: string): KernelFlavor {
  try {
    const m = JSON.parse(readFileSync(join(dirname(kernelPath), "manifest.json"), "utf8")) as Manifest;
    for (const [flavor, k] of Object.entries(m.kernels ?? {})) {
      if (k?.path && basename(k.path) === basename(kernelPath)) return flavor === "minimal" ? "minimal" : flavor === "generic" ? "generic" : "unknown";
    }
  } catch {
    /* no manifest: a kernel from elsewhere */
  }
  return "unknown";
}

/** Whether the VM should offer ACPI (microvm): off only for kernels known to lack it. */
export function kernelWantsAcpi(kernelPath: string): boolean {
  return kernelFlavor(kernelPath) !== "minimal";
}
