import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FrameDecoder,
  HEADER_LENGTH,
  MESSAGE_LENGTH_MAX,
  MessageType,
  decodeHeader,
  encodeFrame,
  encodeHeader,
  type DecodeEvent,
} from "../../src/protocols/ttrpc/index.js";

test("constants match ttrpc v1.1", () => {
  assert.equal(HEADER_LENGTH, 10);
  assert.equal(MESSAGE_LENGTH_MAX, 4 * 1024 * 1024);
  assert.equal(MessageType.Request, 1);
  assert.equal(MessageType.Response, 2);
});

test("encodeFrame writes a big-endian header followed by the payload", () => {
  const frame = encodeFrame(0x01020305, MessageType.Request, 0, Uint8Array.from([0xaa, 0xbb, 0xcc]));
  assert.deepEqual(
    [...frame],
    [0x00, 0x00, 0x00, 0x03, 0x01, 0x02, 0x03, 0x05, 0x01, 0x00, 0xaa, 0xbb, 0xcc],
  );
  assert.deepEqual(decodeHeader(frame), { length: 3, streamId: 0x01020305, type: 1, flags: 0 });
  assert.deepEqual([...encodeHeader(0x10000, 7, 2, 4)], [0, 1, 0, 0, 0, 0, 0, 7, 2, 4]);
});

test("encodeFrame refuses payloads above the maximum", () => {
  assert.throws(() => encodeFrame(1, 1, 0, new Uint8Array(MESSAGE_LENGTH_MAX + 1)), RangeError);
  assert.equal(encodeFrame(1, 1, 0, new Uint8Array(MESSAGE_LENGTH_MAX)).length, MESSAGE_LENGTH_MAX + HEADER_LENGTH);
});

test("decoder handles several frames in one chunk, including empty payloads", () => {
  const a = encodeFrame(1, 1, 0, Buffer.from("hello"));
  const b = encodeFrame(3, 2, 0, new Uint8Array(0));
  const c = encodeFrame(5, 1, 0, Buffer.from("world!"));
  const dec = new FrameDecoder();
  const events = dec.push(Buffer.concat([a, b, c]));
  assert.equal(events.length, 3);
  const frames = events.map((e) => {
    assert.equal(e.kind, "frame");
    return e.kind === "frame" ? [e.streamId, e.type, e.payload.toString()] : [];
  });
  assert.deepEqual(frames, [
    [1, 1, "hello"],
    [3, 2, ""],
    [5, 1, "world!"],
  ]);
  assert.ok(dec.idle);
  assert.equal(dec.end(), undefined);
});

test("decoder handles headers and payloads split byte by byte", () => {
  const payload = Buffer.alloc(300);
  for (let i = 0; i < payload.length; i++) payload[i] = i & 0xff;
  const bytes = Buffer.concat([encodeFrame(9, 1, 0, payload), encodeFrame(11, 2, 0, Buffer.from("x"))]);
  const dec = new FrameDecoder();
  const events: DecodeEvent[] = [];
  for (let i = 0; i < bytes.length; i++) {
    events.push(...dec.push(bytes.subarray(i, i + 1)));
    if (i < HEADER_LENGTH + payload.length - 1) assert.equal(events.length, 0);
  }
  assert.equal(events.length, 2);
  const [first, second] = events;
  assert.ok(first?.kind === "frame" && second?.kind === "frame");
  assert.equal(first.streamId, 9);
  assert.ok(first.payload.equals(payload));
  assert.equal(second.streamId, 11);
  assert.equal(second.payload.toString(), "x");
});

test("decoder reports oversize frames and skips exactly their payload", () => {
  const max = 16;
  const dec = new FrameDecoder(max);
  const header = encodeHeader(40, 7, MessageType.Request, 0);
  const ev1 = dec.push(header);
  assert.deepEqual(ev1, [{ kind: "oversize", streamId: 7, type: 1, flags: 0, length: 40 }]);
  // Payload arrives in pieces, followed by a normal frame in the same chunk.
  assert.deepEqual(dec.push(Buffer.alloc(25, 1)), []);
  const next = encodeFrame(9, MessageType.Request, 0, Buffer.from("ok"));
  const ev2 = dec.push(Buffer.concat([Buffer.alloc(15, 2), next]));
  assert.equal(ev2.length, 1);
  assert.ok(ev2[0]?.kind === "frame");
  assert.equal(ev2[0].streamId, 9);
  assert.equal(ev2[0].payload.toString(), "ok");
});

test("decoder reports truncated frames at end of stream", () => {
  const dec = new FrameDecoder();
  dec.push(Buffer.from([0, 0, 0]));
  assert.equal(dec.idle, false);
  assert.deepEqual(dec.end(), { kind: "truncated", received: 3 });
  assert.ok(dec.idle);

  const frame = encodeFrame(1, 1, 0, Buffer.alloc(100));
  dec.push(frame.subarray(0, 50));
  assert.deepEqual(dec.end(), { kind: "truncated", received: 50, expected: 110 });
  assert.equal(dec.end(), undefined);
});
