// ttRPC wire framing (protocol v1.1): a 10-byte big-endian header
//   u32 payload length | u32 stream id | u8 message type | u8 flags
// followed by `length` payload bytes.

import { Duplex, type Readable, type Writable } from "node:stream";

export const HEADER_LENGTH = 10;
/** Largest payload a peer may send: 4 MiB. */
export const MESSAGE_LENGTH_MAX = 4 << 20;

export enum MessageType {
  Request = 1,
  Response = 2,
  /** Streaming data frames of newer ttrpc versions; not supported here. */
  Data = 3,
}

/** Flags of newer ttrpc streaming; unary messages use 0. */
export const FLAG_REMOTE_CLOSED = 0x1;
export const FLAG_REMOTE_OPEN = 0x2;
export const FLAG_NO_DATA = 0x4;

export interface FrameHeader {
  length: number;
  streamId: number;
  type: number;
  flags: number;
}

/** Encodes only a header; the caller writes `length` payload bytes after it. */
export function encodeHeader(length: number, streamId: number, type: number, flags: number): Buffer {
  const header = Buffer.allocUnsafe(HEADER_LENGTH);
  header.writeUInt32BE(length >>> 0, 0);
  header.writeUInt32BE(streamId >>> 0, 4);
  header.writeUInt8(type & 0xff, 8);
  header.writeUInt8(flags & 0xff, 9);
  return header;
}

/** Parses a header from the first 10 bytes of `buf`. */
export function decodeHeader(buf: Uint8Array): FrameHeader {
  if (buf.length < HEADER_LENGTH) {
    throw new RangeError(`ttrpc header needs ${HEADER_LENGTH} bytes, got ${buf.length}`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, HEADER_LENGTH);
  return {
    length: view.getUint32(0, false),
    streamId: view.getUint32(4, false),
    type: view.getUint8(8),
    flags: view.getUint8(9),
  };
}

/**
 * Encodes one complete frame. Throws RangeError if the payload is larger than
 * `maxLength` (default 4 MiB), since a conforming peer would refuse it.
 */
export function encodeFrame(
  streamId: number,
  type: number,
  flags: number,
  payload: Uint8Array,
  maxLength: number = MESSAGE_LENGTH_MAX,
): Buffer {
  if (payload.length > maxLength) {
    throw new RangeError(`ttrpc message length ${payload.length} exceeds maximum ${maxLength}`);
  }
  const out = Buffer.allocUnsafe(HEADER_LENGTH + payload.length);
  out.writeUInt32BE(payload.length, 0);
  out.writeUInt32BE(streamId >>> 0, 4);
  out.writeUInt8(type & 0xff, 8);
  out.writeUInt8(flags & 0xff, 9);
  out.set(payload, HEADER_LENGTH);
  return out;
}

/** A complete frame. */
export interface FrameEvent {
  kind: "frame";
  streamId: number;
  type: number;
  flags: number;
  payload: Buffer;
}

/**
 * A frame whose declared length was above the maximum. Its payload has been
 * (or is being) skipped; this event is emitted as soon as the header is seen.
 */
export interface OversizeEvent {
  kind: "oversize";
  streamId: number;
  type: number;
  flags: number;
  length: number;
}

/** The stream ended in the middle of a frame. */
export interface TruncatedEvent {
  kind: "truncated";
  /** Bytes of the unfinished frame (header included) that were received. */
  received: number;
  /** Bytes the unfinished frame should have had, if the header was complete. */
  expected?: number;
}

export type DecodeEvent = FrameEvent | OversizeEvent | TruncatedEvent;

/**
 * Incremental frame decoder. Feed it chunks with `push()`; it returns the
 * events those bytes completed. Payloads are copied once into a buffer of the
 * exact size; oversize payloads are counted and dropped, never buffered.
 */
export class FrameDecoder {
  readonly maxLength: number;
  private readonly header = Buffer.alloc(HEADER_LENGTH);
  private headerFill = 0;
  private current: FrameHeader | undefined;
  private payload: Buffer | undefined;
  private payloadFill = 0;
  private discardLeft = 0;

  constructor(maxLength: number = MESSAGE_LENGTH_MAX) {
    this.maxLength = maxLength;
  }

  /** True if no partial frame is buffered. */
  get idle(): boolean {
    return this.headerFill === 0 && this.current === undefined;
  }

  push(chunk: Uint8Array): DecodeEvent[] {
    const events: DecodeEvent[] = [];
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      const cur = this.current;
      if (cur === undefined) {
        const take = Math.min(HEADER_LENGTH - this.headerFill, n - pos);
        this.header.set(chunk.subarray(pos, pos + take), this.headerFill);
        this.headerFill += take;
        pos += take;
        if (this.headerFill < HEADER_LENGTH) {
          break;
        }
        const h = decodeHeader(this.header);
        this.headerFill = 0;
        if (h.length > this.maxLength) {
          events.push({ kind: "oversize", streamId: h.streamId, type: h.type, flags: h.flags, length: h.length });
          this.current = h;
          this.discardLeft = h.length;
          this.payload = undefined;
        } else if (h.length === 0) {
          events.push({ kind: "frame", streamId: h.streamId, type: h.type, flags: h.flags, payload: Buffer.alloc(0) });
        } else {
          this.current = h;
          this.payload = Buffer.allocUnsafe(h.length);
          this.payloadFill = 0;
        }
        continue;
      }
      if (this.payload === undefined) {
        // Discarding an oversize payload.
        const take = Math.min(this.discardLeft, n - pos);
        this.discardLeft -= take;
        pos += take;
        if (this.discardLeft === 0) {
          this.current = undefined;
        }
        continue;
      }
      const take = Math.min(cur.length - this.payloadFill, n - pos);
      this.payload.set(chunk.subarray(pos, pos + take), this.payloadFill);
      this.payloadFill += take;
      pos += take;
      if (this.payloadFill === cur.length) {
        events.push({ kind: "frame", streamId: cur.streamId, type: cur.type, flags: cur.flags, payload: this.payload });
        this.current = undefined;
        this.payload = undefined;
        this.payloadFill = 0;
      }
    }
    return events;
  }

  /** Call at end of stream: reports a truncated frame, if any, and resets. */
  end(): TruncatedEvent | undefined {
    let ev: TruncatedEvent | undefined;
    if (this.current !== undefined) {
      const got = this.payload !== undefined ? this.payloadFill : this.current.length - this.discardLeft;
      ev = { kind: "truncated", received: HEADER_LENGTH + got, expected: HEADER_LENGTH + this.current.length };
    } else if (this.headerFill > 0) {
      ev = { kind: "truncated", received: this.headerFill };
    }
    this.headerFill = 0;
    this.current = undefined;
    this.payload = undefined;
    this.payloadFill = 0;
    this.discardLeft = 0;
    return ev;
  }
}


/**
 * What a ttRPC endpoint talks over: a Duplex (unix/vsock socket) or a pair of
 * streams (e.g. fs streams of a virtio-serial character device).
 */
export type Transport = Duplex | { readable: Readable; writable: Writable };

export interface TransportParts {
  readable: Readable;
  writable: Writable;
  /** readable and writable are the same Duplex object. */
  same: boolean;
}

export function splitTransport(t: Transport): TransportParts {
  if (t instanceof Duplex) {
    return { readable: t, writable: t, same: true };
  }
  const pair = t as { readable: unknown; writable: unknown };
  if (typeof pair.readable === "object" && pair.readable !== null && typeof pair.writable === "object" && pair.writable !== null) {
    const readable = pair.readable as Readable;
    const writable = pair.writable as Writable;
    return { readable, writable, same: (readable as unknown) === (writable as unknown) };
  }
  throw new TypeError("ttrpc transport must be a stream.Duplex or a {readable, writable} pair");
}

/**
 * Ends the write side (flushing what is queued), stops reading, and destroys
 * everything once flushed or after `graceMs` at the latest.
 */
export function shutdownTransport(parts: TransportParts, graceMs = 1000): void {
  const { readable, writable, same } = parts;
  const destroyAll = (): void => {
    if (!writable.destroyed) writable.destroy();
    if (!same && !readable.destroyed) readable.destroy();
  };
  if (!same) {
    readable.destroy();
  }
  if (writable.destroyed) {
    destroyAll();
    return;
  }
  const timer = setTimeout(destroyAll, graceMs);
  timer.unref();
  const done = (): void => {
    clearTimeout(timer);
    destroyAll();
  };
  if (writable.writableFinished) {
    done();
    return;
  }
  writable.once("finish", done);
  writable.once("error", done);
  writable.once("close", done);
  if (!writable.writableEnded) {
    try {
      writable.end();
    } catch {
      done();
    }
  }
}

/** A pino-compatible logger subset; ttrpc logs nothing unless given one. */
export interface TtrpcLogger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}
