// Test fixture: a busybox OCI image built locally (no registry is reachable on
// the project's machines). Produces an OCI image layout tarball that
// `ctr images import` accepts, named by the `io.containerd.image.name` annotation.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

export const BUSYBOX_REF = "localhost/busybox:latest";
const DEFAULT_CMD = ["sh"];
/**
 * The CRI sandbox ("pause") image: busybox sleeping for ever. runc runs it as
 * the pod's infra container; hako never runs it (the VM is the sandbox).
 */
export const PAUSE_REF = "localhost/pause:hako-test";
export const PAUSE_CMD = ["/bin/sleep", "infinity"];
const BUSYBOX = "/bin/busybox";
/** Bump when the layout produced here changes, so stale cached tars are not reused. */
const FORMAT = 2;
const TAR_DETERMINISTIC = ["--format=gnu", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"];

const MT_INDEX = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar";

export const IMAGE_CACHE_DIR = process.env.HAKO_TEST_IMAGE_CACHE ?? "/var/cache/hako/test-images";

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string };
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Debian package version of busybox-static, or the binary's own banner as a fallback. */
export function busyboxVersion(): string {
  try {
    return execFileSync("dpkg-query", ["-W", "-f=${Version}", "busybox-static"], { encoding: "utf8" }).trim();
  } catch {
    const banner = execFileSync(BUSYBOX, ["--help"], { encoding: "utf8" }).split("\n")[0] ?? "";
    return /v([0-9][^ ]*)/.exec(banner)?.[1] ?? "unknown";
  }
}

/** Where the cached image tarball for the installed busybox lives. */
export function cachedBusyboxTarPath(ref = BUSYBOX_REF, cmd = DEFAULT_CMD): string {
  const bin = readFileSync(BUSYBOX);
  const key = sha256(Buffer.concat([bin, Buffer.from(`\0${ref}\0${FORMAT}\0${JSON.stringify(cmd)}`)])).slice(0, 12);
  const version = busyboxVersion().replace(/[^A-Za-z0-9.+_-]/g, "_");
  return join(IMAGE_CACHE_DIR, `busybox-${version}-${key}.tar`);
}

/** Lays out the busybox root filesystem in `dir` (which must exist). */
function writeRootfs(dir: string): void {
  chmodSync(dir, 0o755);
  for (const d of ["bin", "proc", "sys", "dev", "tmp", "etc", "root"]) {
    mkdirSync(join(dir, d));
    chmodSync(join(dir, d), d === "tmp" ? 0o1777 : d === "root" ? 0o700 : 0o755);
  }
  copyFileSync(BUSYBOX, join(dir, "bin", "busybox"));
  chmodSync(join(dir, "bin", "busybox"), 0o755);
  const applets = execFileSync(BUSYBOX, ["--list"], { encoding: "utf8" }).split("\n").filter(Boolean);
  for (const a of new Set(applets)) {
    if (a === "busybox" || a.includes("/")) continue;
    symlinkSync("busybox", join(dir, "bin", a));
  }
  writeFileSync(join(dir, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
  writeFileSync(join(dir, "etc", "group"), "root:x:0:\nnogroup:x:65534:\n");
  chmodSync(join(dir, "etc", "passwd"), 0o644);
  chmodSync(join(dir, "etc", "group"), 0o644);
  // As in distribution images (containerd's CRI mounts its own over it; ctr does not).
  writeFileSync(join(dir, "etc", "hostname"), "busybox\n");
  chmodSync(join(dir, "etc", "hostname"), 0o644);
}

/**
 * Builds an OCI image layout tarball of a static busybox at `outTar`
 * (one uncompressed layer; written atomically). Deterministic: the same
 * busybox binary and ref give byte-identical output.
 */
export async function buildBusyboxImage(outTar: string, ref = BUSYBOX_REF, cmd = DEFAULT_CMD): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), "hako-test-ociimg-"));
  try {
    const rootfs = join(work, "rootfs");
    mkdirSync(rootfs);
    writeRootfs(rootfs);
    const layout = join(work, "layout");
    const blobs = join(layout, "blobs", "sha256");
    mkdirSync(blobs, { recursive: true });

    const layerTmp = join(work, "layer.tar");
    // Explicit top-level names: no "./" entry, so the image root keeps the runtime's mode.
    execFileSync("tar", ["-C", rootfs, "-cf", layerTmp, ...TAR_DETERMINISTIC, "bin", "dev", "etc", "proc", "root", "sys", "tmp"]);
    const layer = readFileSync(layerTmp);
    const layerDigest = sha256(layer);
    renameSync(layerTmp, join(blobs, layerDigest));

    const putJson = (mediaType: string, value: unknown): Descriptor => {
      const data = Buffer.from(JSON.stringify(value));
      const digest = sha256(data);
      writeFileSync(join(blobs, digest), data);
      return { mediaType, digest: `sha256:${digest}`, size: data.length };
    };

    const config = putJson(MT_CONFIG, {
      created: "1970-01-01T00:00:00Z",
      architecture: "amd64",
      os: "linux",
      config: {
        Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        Cmd: cmd,
      },
      rootfs: { type: "layers", diff_ids: [`sha256:${layerDigest}`] },
      history: [{ created: "1970-01-01T00:00:00Z", created_by: "hako test/helpers/oci-image.ts (busybox-static)" }],
    });
    const manifest = putJson(MT_MANIFEST, {
      schemaVersion: 2,
      mediaType: MT_MANIFEST,
      config,
      layers: [{ mediaType: MT_LAYER_TAR, digest: `sha256:${layerDigest}`, size: layer.length }],
    });
    const tag = ref.includes("@") ? "latest" : (/:([^/:]+)$/.exec(ref)?.[1] ?? "latest");
    writeFileSync(
      join(layout, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT_INDEX,
        manifests: [
          {
            ...manifest,
            platform: { architecture: "amd64", os: "linux" },
            annotations: { "io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag },
          },
        ],
      }),
    );
    writeFileSync(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));

    mkdirSync(dirname(outTar), { recursive: true });
    const tmpOut = `${outTar}.tmp-${process.pid}`;
    try {
      execFileSync("tar", ["-C", layout, "-cf", tmpOut, ...TAR_DETERMINISTIC, "blobs", "index.json", "oci-layout"]);
      renameSync(tmpOut, outTar);
    } catch (e) {
      rmSync(tmpOut, { force: true });
      throw e;
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The cached busybox image tarball, built on first use (once per machine). */
export async function busyboxImageTar(ref = BUSYBOX_REF, cmd = DEFAULT_CMD): Promise<string> {
  const path = cachedBusyboxTarPath(ref, cmd);
  if (!existsSync(path)) await buildBusyboxImage(path, ref, cmd);
  return path;
}
