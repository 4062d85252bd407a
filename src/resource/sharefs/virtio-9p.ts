// ShareFs over virtio-9p: QEMU exports <sandbox>/shared with
// security_model=none; files are bind-mounted below it per container.
import { mkdirSync, statSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { bindMount, removeTree } from "../mounts.js";
import type { GuestStorage, ShareFs, SharedPath } from "./share-fs.js";

export class VirtioNinePShare implements ShareFs {
  readonly tag = "hakoShared";
  readonly guestDir = "/run/hako/shared";

  constructor(
    private readonly sandboxId: string,
    readonly hostDir: string,
    private readonly msize: number,
  ) {
    mkdirSync(hostDir, { recursive: true, mode: 0o700 });
  }

  guestStorage(): GuestStorage {
    return { driver: "9p", source: this.tag, fstype: "9p", options: [`msize=${this.msize}`, "cache=mmap"], mountPoint: this.guestDir };
  }

  async share(containerId: string, name: string, source: string, opts: { readonly?: boolean } = {}): Promise<SharedPath> {
    const rel = join(containerId, name);
    const target = join(this.hostDir, rel);
    const st = statSync(source);
    if (st.isDirectory()) mkdirSync(target, { recursive: true });
    else {
      mkdirSync(join(target, ".."), { recursive: true });
      if (!existsSync(target)) writeFileSync(target, "");
    }
    await bindMount(this.sandboxId, source, target, opts.readonly ?? false);
    return { hostPath: target, guestPath: join(this.guestDir, rel) };
  }

  async unshareContainer(containerId: string): Promise<void> {
    await removeTree(this.sandboxId, join(this.hostDir, containerId));
  }

  async cleanup(): Promise<void> {
    await removeTree(this.sandboxId, this.hostDir);
  }
}
