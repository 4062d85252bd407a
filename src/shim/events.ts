// Publishes task events to containerd: ttrpc call
// containerd.services.events.ttrpc.v1.Events/Forward on $TTRPC_ADDRESS with
// Envelope{timestamp, namespace, topic, Any{type_url: "containerd.events.<Msg>"}}.
// publish() never blocks: events are queued and sent strictly one at a time,
// in order; a failed send is retried (reconnecting) a few times, then dropped.
// Its promise says when that event left the queue, for a caller that must
// not answer something else before containerd has it (TaskOOM before Wait).
import { create, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Events } from "../protocols/gen/containerd/services/events/ttrpc/v1/events_pb.js";
import { NAMESPACE_METADATA_KEY, TtrpcClient, createServiceClient } from "../protocols/ttrpc/index.js";
import type { ServiceClient, TtrpcLogger } from "../protocols/ttrpc/index.js";

/** Topics containerd expects for task events. */
export const TaskTopic = {
  create: "/tasks/create",
  start: "/tasks/start",
  exit: "/tasks/exit",
  delete: "/tasks/delete",
  execAdded: "/tasks/exec-added",
  execStarted: "/tasks/exec-started",
  oom: "/tasks/oom",
  paused: "/tasks/paused",
  resumed: "/tasks/resumed",
  checkpointed: "/tasks/checkpointed",
} as const;
export type TaskTopicName = (typeof TaskTopic)[keyof typeof TaskTopic];

/** The bare type URL containerd uses for an event message, e.g. `containerd.events.TaskExit`. */
export function eventTypeUrl(schema: DescMessage): string {
  return schema.typeName;
}

export interface EventPublisherOptions {
  /** ttrpc socket of containerd (plain path or unix://); default $TTRPC_ADDRESS. */
  address?: string;
  logger?: TtrpcLogger;
  /** Attempts per event before it is dropped (default 5). */
  maxAttempts?: number;
  /** Delay before retry n is n × this (default 100 ms). */
  retryDelayMs?: number;
  /** Timeout of one Forward call (default 5 s). */
  callTimeoutMs?: number;
  /** Events kept while containerd is unreachable; older ones are dropped first (default 4096). */
  maxQueue?: number;
}

interface Queued {
  namespace: string;
  topic: string;
  typeUrl: string;
  value: Uint8Array;
  timestamp: Timestamp;
  /** Called once the event left the queue: sent, or dropped. */
  done: () => void;
  /** Resolved by done(). */
  left: Promise<void>;
}

export class EventPublisher {
  private readonly address: string;
  private readonly options: EventPublisherOptions;
  private readonly queue: Queued[] = [];
  private client: TtrpcClient | undefined;
  private events: ServiceClient<typeof Events> | undefined;
  private pumping: Promise<void> | undefined;
  private closed = false;
  private warnedNoAddress = false;

  constructor(options: EventPublisherOptions = {}) {
    this.options = options;
    const addr = options.address ?? process.env.TTRPC_ADDRESS ?? "";
    this.address = addr.startsWith("unix://") ? addr.slice("unix://".length) : addr;
  }

  /** Events waiting to be sent (including the one in flight). */
  get pending(): number {
    return this.queue.length;
  }

  /**
   * Queues one event; returns at once. The envelope timestamp is taken now,
   * the message is encoded now (later changes to `event` are not seen).
   * The promise (which never rejects) resolves once containerd accepted the
   * event or it was dropped.
   */
  publish<Desc extends DescMessage>(namespace: string, topic: string, schema: Desc, event: MessageInitShape<Desc>): Promise<void> {
    if (this.closed) {
      this.options.logger?.warn({ topic }, "events: publisher closed, event dropped");
      return Promise.resolve();
    }
    if (this.address === "") {
      if (!this.warnedNoAddress) {
        this.warnedNoAddress = true;
        this.options.logger?.warn({ topic }, "events: TTRPC_ADDRESS not set, events are dropped");
      }
      return Promise.resolve();
    }
    let value: Uint8Array;
    try {
      value = toBinary(schema, create(schema, event));
    } catch (err) {
      this.options.logger?.error({ err, topic }, "events: cannot encode event, dropped");
      return Promise.resolve();
    }
    const max = this.options.maxQueue ?? 4096;
    if (this.queue.length >= max) {
      // Keep the head (possibly in flight); drop the oldest waiting event.
      const dropped = this.queue.splice(1, 1)[0];
      dropped?.done();
      this.options.logger?.warn({ topic: dropped?.topic }, "events: queue full, oldest event dropped");
    }
    let done = (): void => undefined;
    const left = new Promise<void>((resolve) => (done = resolve));
    this.queue.push({ namespace, topic, typeUrl: eventTypeUrl(schema), value, timestamp: timestampFromMs(Date.now()), done, left });
    this.kick();
    return left;
  }

  /** Resolves once every queued event was sent or dropped. */
  flush(): Promise<void> {
    if (this.queue.length === 0) return Promise.resolve();
    // In order: when the last event has left, every one before it has.
    return this.queue[this.queue.length - 1]!.left;
  }

  /**
   * Stops accepting events, waits up to `timeoutMs` for the queue to drain,
   * then drops what is left and closes the connection.
   */
  async close(timeoutMs = 2000): Promise<void> {
    this.closed = true;
    if (this.queue.length > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.flush(),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
    }
    if (this.queue.length > 0) {
      this.options.logger?.warn({ dropped: this.queue.length }, "events: closing with unsent events");
      for (const ev of this.queue.splice(0)) ev.done();
    }
    this.disconnect();
  }

  private kick(): void {
    if (this.pumping !== undefined) return;
    this.pumping = this.pump().finally(() => {
      this.pumping = undefined;
      if (this.queue.length > 0) this.kick();
    });
  }

  private async pump(): Promise<void> {
    const maxAttempts = Math.max(1, this.options.maxAttempts ?? 5);
    const retryDelay = this.options.retryDelayMs ?? 100;
    while (this.queue.length > 0) {
      const ev = this.queue[0]!;
      let sent = false;
      for (let attempt = 1; attempt <= maxAttempts && !sent; attempt++) {
        if (this.queue[0] !== ev) break; // close() dropped it
        try {
          await this.send(ev);
          sent = true;
        } catch (err) {
          this.disconnect();
          if (this.queue[0] !== ev) break; // close() dropped it
          if (attempt === maxAttempts) {
            this.options.logger?.error({ err, topic: ev.topic, attempts: attempt }, "events: forward failed, event dropped");
          } else {
            this.options.logger?.debug({ err, topic: ev.topic, attempt }, "events: forward failed, retrying");
            await new Promise((resolve) => setTimeout(resolve, attempt * retryDelay));
          }
        }
      }
      if (this.queue[0] === ev) this.queue.shift();
      ev.done();
    }
  }

  private async send(ev: Queued): Promise<void> {
    const events = await this.connect();
    await events.forward(
      {
        envelope: {
          timestamp: ev.timestamp,
          namespace: ev.namespace,
          topic: ev.topic,
          event: { typeUrl: ev.typeUrl, value: ev.value },
        },
      },
      { timeoutMs: this.options.callTimeoutMs ?? 5000, metadata: { [NAMESPACE_METADATA_KEY]: ev.namespace } },
    );
  }

  private async connect(): Promise<ServiceClient<typeof Events>> {
    if (this.client !== undefined && !this.client.isClosed && this.events !== undefined) return this.events;
    this.disconnect();
    const client = await TtrpcClient.connect(this.address, this.options.logger ? { logger: this.options.logger } : {});
    this.client = client;
    this.events = createServiceClient(Events, client);
    return this.events;
  }

  private disconnect(): void {
    this.client?.close();
    this.client = undefined;
    this.events = undefined;
  }
}
