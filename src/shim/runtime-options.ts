// containerd's runtime options as `start` gets them on stdin: a protobuf Any
// holding runtimeoptions.v1.Options. A module of its own, imported by name:
// start.ts loads it only when it spawns a daemon, and the bundler keeps only
// the well-known types it names (a namespace import of the wkt package kept
// all of them, and decoded every descriptor when a shim started).
import { fromBinary } from "@bufbuild/protobuf";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import { OptionsSchema } from "../protocols/gen/runtimeoptions/v1/api_pb.js";

/** The options' type URL and ConfigPath; undefined for other option types or undecodable bytes. */
export function decodeOptionsAny(bytes: Uint8Array): { typeUrl: string; configPath: string } | undefined {
  try {
    const any = fromBinary(AnySchema, bytes);
    const url = any.typeUrl;
    // "runtimeoptions.v1.Options", with or without a type URL prefix.
    if (url !== OptionsSchema.typeName && !url.endsWith(`/${OptionsSchema.typeName}`)) return undefined;
    const opts = fromBinary(OptionsSchema, any.value);
    return { typeUrl: opts.typeUrl, configPath: opts.configPath };
  } catch {
    return undefined;
  }
}
