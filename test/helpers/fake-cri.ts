// An in-process CRI v1 server for unit tests: grpc-js on a unix socket in a
// hako-test-* temp dir, serving only the RPCs a test implements (others
// answer UNIMPLEMENTED) and recording every request it gets.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethodUnary, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { TMP_PREFIX } from "./bundle.js";

/** A handler: gets the decoded request, returns (a plain-object form of) the response or throws a FakeCriStatus. */
type UnaryHandler<M> =
  M extends DescMethodUnary<infer I, infer O> ? (request: MessageShape<I>) => MessageInitShape<O> | Promise<MessageInitShape<O>> : never;

export type FakeServiceImpl<T extends GenServiceMethods> = { [K in keyof GenService<T>["method"]]?: UnaryHandler<GenService<T>["method"][K]> };

/** Throw this from a handler to answer with a gRPC status. */
export class FakeCriStatus extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
  ) {
    super(details);
  }
}

export interface FakeCri {
  /** `unix://…` address to give CriClient. */
  address: string;
  /** Requests received, by RPC name (e.g. "RunPodSandbox"), oldest first. */
  requests: Map<string, unknown[]>;
  close(): Promise<void>;
}

export async function startFakeCri(services: Array<{ service: DescService; impl: Record<string, unknown> }>): Promise<FakeCri> {
  const dir = await mkdtemp(join(tmpdir(), `${TMP_PREFIX}cri-`));
  const server = new Server();
  const requests = new Map<string, unknown[]>();
  for (const { service, impl } of services) {
    for (const method of service.methods) {
      const handler = impl[method.localName];
      if (typeof handler !== "function" || method.methodKind !== "unary") continue;
      registerUnary(server, method as DescMethodUnary, handler as (req: unknown) => unknown, requests);
    }
  }
  const socket = join(dir, "cri.sock");
  const address = `unix://${socket}`;
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(address, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  return {
    address,
    requests,
    async close() {
      server.forceShutdown();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Typed entry for startFakeCri: `serve(RuntimeService, { runPodSandbox: (req) => ({ podSandboxId: "p1" }) })`. */
export function serve<T extends GenServiceMethods>(service: GenService<T>, impl: FakeServiceImpl<T>): { service: DescService; impl: Record<string, unknown> } {
  return { service, impl: impl as Record<string, unknown> };
}

function registerUnary<I extends DescMessage, O extends DescMessage>(
  server: Server,
  method: DescMethodUnary<I, O>,
  handler: (req: unknown) => unknown,
  requests: Map<string, unknown[]>,
): void {
  const path = `/${method.parent.typeName}/${method.name}`;
  server.register<MessageShape<I>, MessageShape<O>>(
    path,
    (call: ServerUnaryCall<MessageShape<I>, MessageShape<O>>, callback: sendUnaryData<MessageShape<O>>) => {
      const list = requests.get(method.name) ?? [];
      list.push(call.request);
      requests.set(method.name, list);
      Promise.resolve()
        .then(() => handler(call.request))
        .then(
          (init) => callback(null, create(method.output, init as MessageInitShape<O>)),
          (err: unknown) => {
            if (err instanceof FakeCriStatus) callback({ code: err.code, details: err.details });
            else callback({ code: 13, details: `fake handler failed: ${String(err)}` });
          },
        );
    },
    (response) => Buffer.from(toBinary(method.output, response)),
    (bytes) => fromBinary(method.input, bytes),
    "unary",
  );
}
