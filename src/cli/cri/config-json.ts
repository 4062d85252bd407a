// Pod and container config files for `hako cri runp/create` and tests: the
// protobuf JSON form of PodSandboxConfig / ContainerConfig (crictl's format).
// Field names may be camelCase ("logDirectory") or the .proto's own
// ("log_directory"); enums by name ("NODE"). Unknown fields are rejected so a
// typo does not silently drop a setting.
import { readFileSync } from "node:fs";
import { fromJson, type DescMessage, type JsonValue, type MessageShape } from "@bufbuild/protobuf";
import {
  ContainerConfigSchema,
  PodSandboxConfigSchema,
  type ContainerConfig,
  type PodSandboxConfig,
} from "../../protocols/gen/cri/runtime/v1/api_pb.js";
import { ConfigError } from "../../runtime/errors.js";

/** Parses `text` (from `source`, for messages) as the protobuf JSON of `schema`. */
export function parseCriJson<Desc extends DescMessage>(schema: Desc, text: string, source: string): MessageShape<Desc> {
  let value: JsonValue;
  try {
    value = JSON.parse(text) as JsonValue;
  } catch (err) {
    throw new ConfigError(`${source}: not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError(`${source}: expected a JSON object holding a ${schema.name}`);
  }
  try {
    return fromJson(schema, value);
  } catch (err) {
    throw new ConfigError(`${source}: not a valid ${schema.typeName}: ${(err as Error).message}`, {
      hint: `fields use the CRI's protobuf JSON names, e.g. "logDirectory" or "log_directory"; see src/protocols/proto/cri/runtime/v1/api.proto`,
      cause: err,
    });
  }
}

export function parsePodSandboxConfig(text: string, source = "pod config"): PodSandboxConfig {
  return parseCriJson(PodSandboxConfigSchema, text, source);
}

export function parseContainerConfig(text: string, source = "container config"): ContainerConfig {
  return parseCriJson(ContainerConfigSchema, text, source);
}

export function readPodSandboxConfig(file: string): PodSandboxConfig {
  return parsePodSandboxConfig(readConfigFile(file), file);
}

export function readContainerConfig(file: string): ContainerConfig {
  return parseContainerConfig(readConfigFile(file), file);
}

function readConfigFile(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}
