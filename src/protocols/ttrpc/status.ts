// ttRPC status codes (same numbering as gRPC's codes) and the error type that
// carries one across the wire.

export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

const MAX_CODE = Code.UNAUTHENTICATED;

/** Whether `value` is an integer status code in the range 0..16. */
export function isCode(value: unknown): value is Code {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= MAX_CODE;
}

/** Upper-case name of a status code, e.g. `NOT_FOUND`; `CODE(42)` for unknown values. */
export function codeName(code: number): string {
  if (isCode(code)) {
    return Code[code];
  }
  return `CODE(${code})`;
}

/** An RPC failure with a status code. `message` is the server's message, unmodified. */
export class TtrpcError extends Error {
  readonly code: Code;
  /** Raw `google.protobuf.Any` details as received (type URL and value), if any. */
  readonly details: ReadonlyArray<{ typeUrl: string; value: Uint8Array }>;

  constructor(
    code: Code,
    message: string,
    options?: { cause?: unknown; details?: ReadonlyArray<{ typeUrl: string; value: Uint8Array }> },
  ) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = "TtrpcError";
    this.code = code;
    this.details = options?.details ?? [];
  }

  /** `CODE: message`, handy for logs. */
  override toString(): string {
    return `${this.name} ${codeName(this.code)}: ${this.message}`;
  }
}

/** Whether `err` is a TtrpcError, optionally with the given code. */
export function isTtrpcError(err: unknown, code?: Code): err is TtrpcError {
  return err instanceof TtrpcError && (code === undefined || err.code === code);
}

/**
 * Maps anything a handler threw to a (code, message) pair:
 * - TtrpcError keeps its code;
 * - an object with a numeric `code` in 0..16 (or a numeric `grpcCode`) uses it;
 * - anything else is UNKNOWN with the error's message.
 * A code of OK on a thrown error makes no sense and becomes UNKNOWN.
 */
export function statusFromError(err: unknown): { code: Code; message: string } {
  let code: Code = Code.UNKNOWN;
  let message: string;
  if (err instanceof TtrpcError) {
    code = err.code;
    message = err.message;
  } else if (typeof err === "object" && err !== null) {
    const rec = err as { code?: unknown; grpcCode?: unknown; message?: unknown };
    if (isCode(rec.code)) {
      code = rec.code;
    } else if (isCode(rec.grpcCode)) {
      code = rec.grpcCode;
    }
    message = typeof rec.message === "string" ? rec.message : String(err);
  } else {
    message = String(err);
  }
  if (code === Code.OK) {
    code = Code.UNKNOWN;
  }
  return { code, message };
}
