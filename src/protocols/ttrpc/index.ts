// Public API of hako's ttRPC implementation (containerd ttrpc wire protocol v1.1).

export { Code, TtrpcError, codeName, isCode, isTtrpcError, statusFromError } from "./status.js";
export {
  FLAG_NO_DATA,
  FLAG_REMOTE_CLOSED,
  FLAG_REMOTE_OPEN,
  FrameDecoder,
  HEADER_LENGTH,
  MESSAGE_LENGTH_MAX,
  MessageType,
  decodeHeader,
  encodeFrame,
  encodeHeader,
  splitTransport,
} from "./framing.js";
export type {
  DecodeEvent,
  FrameEvent,
  FrameHeader,
  OversizeEvent,
  Transport,
  TransportParts,
  TruncatedEvent,
  TtrpcLogger,
} from "./framing.js";
export { NAMESPACE_METADATA_KEY, TtrpcClient, createServiceClient } from "./client.js";
export type { CallOptions, ServiceClient, TtrpcClientOptions } from "./client.js";
export { TtrpcServer } from "./server.js";
export type { CallContext, FallbackHandler, RawHandler, ServeHandle, ServiceImpl, TtrpcServerOptions } from "./server.js";
