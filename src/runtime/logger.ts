// Structured logging (pino). Every record carries the component and, where
// known, sandbox/container ids as child bindings.
import { pino, type Logger, type DestinationStream } from "pino";

export type { Logger };

export function createLogger(component: string, opts: { level?: string; destination?: DestinationStream | number; sync?: boolean } = {}): Logger {
  const level = opts.level ?? process.env.HAKO_LOG_LEVEL ?? "warn";
  const dest = opts.destination ?? 2;
  const stream = typeof dest === "number" ? pino.destination({ fd: dest, sync: opts.sync ?? true }) : dest;
  return pino({ level, base: { component, pid: process.pid } }, stream);
}
