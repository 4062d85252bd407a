// configuration.toml: loading, defaults, validation. Unknown keys and bad
// values are errors that name the key. Load order: an explicit path
// (--config / HAKO_CONFIG / containerd's ConfigPath), then
// /etc/hako/configuration.toml, then the installed default.
import { readFileSync, existsSync } from "node:fs";
import { parse as parseToml } from "smol-toml";
import { ConfigError } from "./errors.js";
import { SYSTEM_CONFIG_PATH, assetPath, defaultConfigPath } from "./paths.js";

export type Accel = "auto" | "kvm" | "tcg";
export type RootfsType = "initrd" | "erofs";

export interface QemuConfig {
  path: string;
  kernel: string;
  initrd: string;
  /** erofs image holding node, on virtio-blk beside the initrd ("": node is in the initrd, images built before it had its own). */
  node_image: string;
  image: string;
  rootfs_type: RootfsType;
  machine_type: string;
  cpu_model: string;
  default_vcpus: number;
  default_memory: number;
  kernel_params: string;
  accel: Accel;
  tb_size: number;
  accel_probe_timeout: number;
  boot_timeout: number;
  shared_fs: "virtio-9p";
  msize_9p: number;
  free_page_reporting: boolean;
  /** GLIBC_TUNABLES in QEMU's environment ("" leaves it as inherited): malloc settings that bound QEMU's own heap. */
  glibc_tunables: string;
  /** QEMU runs with the kernel's process-wide KSM setting (PR_SET_MEMORY_MERGE): KSM may merge all its anonymous memory, not only guest RAM. */
  merge_all_memory: boolean;
  /** Under TCG, boot guests with `norandmaps` (no ASLR) so that QEMU reuses its translations across guest processes. */
  tcg_norandmaps: boolean;
  /** Under TCG, boot guests with `mitigations=off`: the guest's speculation barriers guard no real CPU there. */
  tcg_mitigations_off: boolean;
  /** The guest kernel's lockdown level (`lockdown=`); "confidentiality" also keeps it from setting up tracefs. */
  guest_lockdown: GuestLockdown;
}

export type GuestLockdown = "none" | "integrity" | "confidentiality";

export interface AgentConfig {
  dial_timeout: number;
  debug: boolean;
}

export interface RuntimeConfig {
  state_dir: string;
  log_level: "trace" | "debug" | "info" | "warn" | "error" | "fatal";
  internetworking_model: "tcfilter" | "none";
  /** Sandboxes that start their VM at once on this host (start slots): 0 = one per host CPU, -1 = no limit. */
  start_concurrency: number;
  /** Shim daemons kept started, per containerd namespace, for the next pods (src/shim/spare.ts): 0 = none. */
  shim_spares: number;
}

export interface FactoryConfig {
  enable_template: boolean;
  template_path: string;
  /** TCG translation cache (MiB) of a VM cloned from a template (not part of the migrated state). */
  clone_tb_size: number;
  /** Warm clones per template kept by `hako factory cache` (0: no VM cache; sandboxes restore their own clone). */
  vm_cache_number: number;
  /** A sandbox that finds no usable template for a shape `hako factory init` builds starts `hako factory init --missing` in the background. */
  auto_rebuild: boolean;
}

export interface HakoConfig {
  hypervisor: { qemu: QemuConfig };
  agent: AgentConfig;
  runtime: RuntimeConfig;
  factory: FactoryConfig;
  /** The file this configuration was read from ("" = built-in defaults). */
  source: string;
}

type FieldSpec =
  | { kind: "string"; oneOf?: readonly string[] }
  | { kind: "int"; min: number; max: number }
  | { kind: "bool" };

const QEMU_FIELDS: Record<keyof QemuConfig, FieldSpec> = {
  path: { kind: "string" },
  kernel: { kind: "string" },
  initrd: { kind: "string" },
  node_image: { kind: "string" },
  image: { kind: "string" },
  rootfs_type: { kind: "string", oneOf: ["initrd", "erofs"] },
  machine_type: { kind: "string", oneOf: ["microvm", "q35"] },
  cpu_model: { kind: "string" },
  default_vcpus: { kind: "int", min: 1, max: 64 },
  default_memory: { kind: "int", min: 64, max: 65536 },
  kernel_params: { kind: "string" },
  accel: { kind: "string", oneOf: ["auto", "kvm", "tcg"] },
  tb_size: { kind: "int", min: 8, max: 2048 },
  accel_probe_timeout: { kind: "int", min: 1, max: 600 },
  boot_timeout: { kind: "int", min: 1, max: 600 },
  shared_fs: { kind: "string", oneOf: ["virtio-9p"] },
  msize_9p: { kind: "int", min: 4096, max: 1048576 },
  free_page_reporting: { kind: "bool" },
  glibc_tunables: { kind: "string" },
  merge_all_memory: { kind: "bool" },
  tcg_norandmaps: { kind: "bool" },
  tcg_mitigations_off: { kind: "bool" },
  guest_lockdown: { kind: "string", oneOf: ["none", "integrity", "confidentiality"] },
};
const AGENT_FIELDS: Record<keyof AgentConfig, FieldSpec> = {
  dial_timeout: { kind: "int", min: 1, max: 600 },
  debug: { kind: "bool" },
};
const RUNTIME_FIELDS: Record<keyof RuntimeConfig, FieldSpec> = {
  state_dir: { kind: "string" },
  log_level: { kind: "string", oneOf: ["trace", "debug", "info", "warn", "error", "fatal"] },
  internetworking_model: { kind: "string", oneOf: ["tcfilter", "none"] },
  start_concurrency: { kind: "int", min: -1, max: 4096 },
  shim_spares: { kind: "int", min: 0, max: 64 },
};
const FACTORY_FIELDS: Record<keyof FactoryConfig, FieldSpec> = {
  enable_template: { kind: "bool" },
  template_path: { kind: "string" },
  clone_tb_size: { kind: "int", min: 8, max: 2048 },
  vm_cache_number: { kind: "int", min: 0, max: 64 },
  auto_rebuild: { kind: "bool" },
};

/**
 * QEMU's default malloc settings: blocks of 128 KiB and more get their own
 * mapping, and free memory at the top of a heap above 128 KiB goes back to the
 * host. Without them glibc raises its mmap threshold to the largest block freed
 * (up to 32 MiB), so the softmmu TLBs and translation-block hash tables a TCG
 * VM resizes again and again end up inside malloc arenas, whose freed pages it
 * keeps: ~4 MiB more PSS per idle cold VM (docs/benchmarks.md, twelfth stop).
 */
export const QEMU_GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";

export function defaultConfig(): HakoConfig {
  return {
    hypervisor: {
      qemu: {
        path: "/usr/bin/qemu-system-x86_64",
        kernel: "guest/vmlinux-generic",
        initrd: "guest/hako-rootfs.initrd",
        node_image: "guest/hako-node.erofs",
        image: "",
        rootfs_type: "initrd",
        machine_type: "microvm",
        cpu_model: "qemu64,+arat",
        default_vcpus: 1,
        default_memory: 512,
        kernel_params: "",
        accel: "auto",
        tb_size: 64,
        accel_probe_timeout: 8,
        boot_timeout: 60,
        shared_fs: "virtio-9p",
        msize_9p: 524288,
        free_page_reporting: true,
        glibc_tunables: QEMU_GLIBC_TUNABLES,
        merge_all_memory: true,
        tcg_norandmaps: true,
        tcg_mitigations_off: true,
        guest_lockdown: "confidentiality",
      },
    },
    agent: { dial_timeout: 60, debug: false },
    runtime: { state_dir: "/run/hako", log_level: "warn", internetworking_model: "tcfilter", start_concurrency: 0, shim_spares: 1 },
    factory: { enable_template: false, template_path: "/run/hako/template", clone_tb_size: 64, vm_cache_number: 0, auto_rebuild: true },
    source: "",
  };
}

function checkValue(key: string, spec: FieldSpec, value: unknown): string | number | boolean {
  switch (spec.kind) {
    case "string":
      if (typeof value !== "string") throw new ConfigError(`configuration key ${key} must be a string, got ${JSON.stringify(value)}`);
      if (spec.oneOf && !spec.oneOf.includes(value))
        throw new ConfigError(`configuration key ${key} = ${JSON.stringify(value)} is not one of ${spec.oneOf.join(", ")}`);
      return value;
    case "int":
      if (typeof value !== "number" && typeof value !== "bigint")
        throw new ConfigError(`configuration key ${key} must be an integer, got ${JSON.stringify(value)}`);
      {
        const n = Number(value);
        if (!Number.isInteger(n) || n < spec.min || n > spec.max)
          throw new ConfigError(`configuration key ${key} = ${n} is out of range ${spec.min}..${spec.max}`);
        return n;
      }
    case "bool":
      if (typeof value !== "boolean") throw new ConfigError(`configuration key ${key} must be true or false, got ${JSON.stringify(value)}`);
      return value;
  }
}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

function applySection<T extends object>(prefix: string, target: T, specs: Record<keyof T & string, FieldSpec>, table: unknown): void {
  if (!isTable(table)) throw new ConfigError(`configuration section [${prefix}] must be a table`);
  for (const [k, v] of Object.entries(table)) {
    const spec = (specs as Record<string, FieldSpec>)[k];
    if (!spec) throw new ConfigError(`unknown configuration key ${prefix}.${k}`, { hint: "see docs/configuration.md for the keys hako knows" });
    (target as Record<string, unknown>)[k] = checkValue(`${prefix}.${k}`, spec, v);
  }
}

/** Parses TOML text into a validated configuration on top of the defaults. */
export function parseConfig(text: string, source: string): HakoConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`cannot parse ${source || "configuration"}: ${(err as Error).message.split("\n")[0]}`, { cause: err });
  }
  const cfg = defaultConfig();
  cfg.source = source;
  for (const [section, value] of Object.entries(doc)) {
    switch (section) {
      case "hypervisor":
        if (!isTable(value)) throw new ConfigError("configuration section [hypervisor] must be a table");
        for (const [hv, table] of Object.entries(value)) {
          if (hv !== "qemu") throw new ConfigError(`unknown configuration key hypervisor.${hv}`, { hint: "only [hypervisor.qemu] is supported" });
          applySection("hypervisor.qemu", cfg.hypervisor.qemu, QEMU_FIELDS, table);
        }
        break;
      case "agent":
        applySection("agent", cfg.agent, AGENT_FIELDS, value);
        break;
      case "runtime":
        applySection("runtime", cfg.runtime, RUNTIME_FIELDS, value);
        break;
      case "factory":
        applySection("factory", cfg.factory, FACTORY_FIELDS, value);
        break;
      default:
        throw new ConfigError(`unknown configuration key ${section}`, { hint: "sections are [hypervisor.qemu], [agent], [runtime], [factory]" });
    }
  }
  const q = cfg.hypervisor.qemu;
  q.kernel = assetPath(q.kernel);
  q.initrd = assetPath(q.initrd);
  q.node_image = assetPath(q.node_image);
  q.image = assetPath(q.image);
  if (q.rootfs_type === "erofs" && q.image === "") throw new ConfigError("hypervisor.qemu.rootfs_type = \"erofs\" needs hypervisor.qemu.image");
  return cfg;
}

/** Which file to load: explicit path, then /etc/hako, then the installed default. */
export function resolveConfigPath(explicit?: string): string | undefined {
  const candidates = [explicit, process.env.HAKO_CONFIG].filter((p): p is string => !!p);
  if (candidates.length > 0) {
    const p = candidates[0]!;
    if (!existsSync(p)) throw new ConfigError(`configuration file ${p} does not exist`, { hint: "fix --config / HAKO_CONFIG" });
    return p;
  }
  if (existsSync(SYSTEM_CONFIG_PATH)) return SYSTEM_CONFIG_PATH;
  const installed = defaultConfigPath();
  return existsSync(installed) ? installed : undefined;
}

export function loadConfig(explicit?: string): HakoConfig {
  const path = resolveConfigPath(explicit);
  if (!path) {
    const cfg = parseConfig("", "");
    return cfg;
  }
  return parseConfig(readFileSync(path, "utf8"), path);
}
