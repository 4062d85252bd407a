// Output helpers for `hako cri`: aligned tables, ages, sizes, and crictl's
// inspect layout (status as protobuf JSON plus the runtime's info entries).
import { toJson, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import { ConfigError } from "../../runtime/errors.js";

/** Left-aligned columns separated by three spaces (as crictl's tabwriter). */
export function formatTable(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, col) => Math.max(...all.map((row) => (row[col] ?? "").length)));
  const line = (row: string[]): string =>
    row
      .map((cell, col) => (col === row.length - 1 ? cell : cell.padEnd(widths[col] ?? 0)))
      .join("   ")
      .trimEnd();
  return `${all.map(line).join("\n")}\n`;
}

/** Ids shortened to 13 characters (as crictl does) unless `full`. */
export function shortId(id: string, full = false): string {
  const bare = id.startsWith("sha256:") ? id.slice("sha256:".length) : id;
  return full ? id : bare.slice(0, 13);
}

/** "12 seconds ago", "5 minutes ago", ... from nanoseconds since the epoch. */
export function ago(unixNanos: bigint, nowMs: number = Date.now()): string {
  if (unixNanos <= 0n) return "-";
  const seconds = Math.max(0, Math.floor((nowMs - Number(unixNanos / 1_000_000n)) / 1000));
  const units: Array<[number, string]> = [
    [86_400, "day"],
    [3_600, "hour"],
    [60, "minute"],
    [1, "second"],
  ];
  for (const [size, name] of units) {
    if (seconds >= size) {
      const n = Math.floor(seconds / size);
      return `${n} ${name}${n === 1 ? "" : "s"} ago`;
    }
  }
  return "just now";
}

/** 1.5MB style sizes (decimal units, as crictl). */
export function humanBytes(bytes: bigint | number): string {
  let value = Number(bytes);
  const units = ["B", "kB", "MB", "GB", "TB"];
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)}${units[unit]}`;
}

/** Protobuf JSON of a message with every field shown (crictl's EmitDefaults). */
export function messageJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): JsonValue {
  return toJson(schema, message, { alwaysEmitImplicit: true });
}

/**
 * crictl's inspect layout: `{"status": …, <info key>: <parsed JSON>…}`. The
 * runtime's info values are JSON documents as strings; ones that do not
 * parse are kept as strings.
 */
export function inspectJson(status: JsonValue | undefined, info: Record<string, string>): string {
  const out: Record<string, JsonValue> = {};
  if (status !== undefined) out.status = status;
  for (const key of Object.keys(info).sort()) {
    const raw = info[key] ?? "";
    try {
      out[key] = JSON.parse(raw) as JsonValue;
    } catch {
      out[key] = raw;
    }
  }
  return `${JSON.stringify(out, null, 2)}\n`;
}

/** `docker.io/library/busybox:1.36` → [`docker.io/library/busybox`, `1.36`]; no tag → `<none>`. */
export function splitRepoTag(ref: string): [string, string] {
  const at = ref.indexOf("@");
  if (at >= 0) return [ref.slice(0, at), "<none>"];
  const colon = ref.lastIndexOf(":");
  if (colon > ref.lastIndexOf("/")) return [ref.slice(0, colon), ref.slice(colon + 1)];
  return [ref, "<none>"];
}

/** "2m", "30s", "1500ms", "1h" or a bare number of seconds → milliseconds. */
export function parseDurationMs(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!match) throw new ConfigError(`invalid duration "${text}"`, { hint: "use e.g. 30s, 2m, 1500ms, or a number of seconds" });
  const value = Number(match[1]);
  const scales: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  const scale = scales[match[2] ?? "s"] ?? 1000;
  return Math.round(value * scale);
}
