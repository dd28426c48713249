// Shared harness for the interop scripts (driven by tests/test_interop.py).
import { createClient as createWsClient } from 'graphql-ws';
import WebSocket from 'ws';
//
// Usage: node <client>.mjs --url http://127.0.0.1:PORT --count N
//                          [--kind task|message] [--timeout MS] [--linger MS]
// (or env TIDINGS_URL / EXPECT_COUNT / KIND). Only loopback URLs are accepted.
//
// stdout protocol, one line each:
//   READY                        the subscription request has been sent (the Python side
//                                also polls the server's subscriber count before mutating)
//   {"event": {...}}             one received event (the taskEvents / messageEvents payload)
//   {"query": [...]}             (urql/apollo) result of a follow-up HTTP query
//   DONE                         N events arrived and nothing else came during the linger
// Exit codes: 0 ok; 2 error result/transport error; 3 extra event(s) during the linger;
// 4 subscription completed early; 124 overall timeout.

export const SUBSCRIPTIONS = {
  task: {
    field: 'taskEvents',
    variables: { where: { status: { eq: 'open' } } },
    query: `subscription TaskEvents($where: TaskWhere) {
  taskEvents(where: $where) {
    __typename operation seq id match changedFields timestamp actor
    previous { __typename title status priority }
    record { __typename id title status priority version }
  }
}`,
    followUp: `query OpenTasks {
  tasks(where: {status: {eq: "open"}}, orderBy: [{title: ASC}]) { __typename id title status }
}`,
    followUpField: 'tasks',
  },
  message: {
    field: 'messageEvents',
    variables: { where: { room: { eq: 'r1' } } },
    query: `subscription MessageEvents($where: MessageWhere) {
  messageEvents(where: $where) {
    __typename operation seq id match changedFields timestamp actor
    previous { __typename room author body }
    record { __typename id room author body version }
  }
}`,
    followUp: `query RoomMessages {
  messages(where: {room: {eq: "r1"}}, orderBy: [{body: ASC}]) { __typename id room body }
}`,
    followUpField: 'messages',
  },
};

export function parseArgs(argv = process.argv.slice(2)) {
  const opts = {
    url: process.env.TIDINGS_URL,
    count: process.env.EXPECT_COUNT,
    kind: process.env.KIND || 'task',
    timeout: 15000,
    linger: 300,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (!key.startsWith('--') || value === undefined) fail(`bad argument ${key}`, 2);
    opts[key.slice(2)] = value;
    i++;
  }
  if (!opts.url) fail('missing --url', 2);
  const url = new URL(opts.url);
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) fail(`refusing non-loopback url ${opts.url}`, 2);
  opts.count = Number(opts.count);
  opts.timeout = Number(opts.timeout);
  opts.linger = Number(opts.linger);
  if (!Number.isInteger(opts.count) || opts.count < 0) fail('--count must be a non-negative integer', 2);
  if (!SUBSCRIPTIONS[opts.kind]) fail(`unknown --kind ${opts.kind}`, 2);
  const base = opts.url.replace(/\/+$/, '');
  opts.httpUrl = `${base.replace(/^ws/, 'http').replace(/\/graphql$/, '')}/graphql`;
  opts.wsUrl = opts.httpUrl.replace(/^http/, 'ws');
  opts.sub = SUBSCRIPTIONS[opts.kind];
  return opts;
}

export function line(text) {
  process.stdout.write(`${text}\n`);
}

export function fail(message, code = 2) {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

function describe(err) {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  if (Array.isArray(err)) return JSON.stringify(err);
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) {
    return `CloseEvent ${err.code} ${err.reason}`;
  }
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

/**
 * Collects events: prints each, and once `count` have arrived waits `linger` ms
 * more; anything arriving in that window is printed too and makes the run fail.
 * `cleanup` (async, optional) disposes the client before the process exits.
 */
export class Collector {
  constructor(opts) {
    this.opts = opts;
    this.received = 0;
    this.finished = false;
    this.cleanup = async () => {};
    this.afterEvents = async () => {};
    this.timer = setTimeout(() => this.exit(124, `timeout after ${opts.timeout} ms with ${this.received}/${opts.count} events`), opts.timeout);
    if (opts.count === 0) this.startLinger();
  }

  ready() {
    line('READY');
  }

  /** Subscribe through a graphql-ws or graphql-sse client; returns its unsubscribe. */
  subscribe(client, ...rest) {
    return client.subscribe(
      { query: this.opts.sub.query, variables: this.opts.sub.variables },
      { next: (result) => this.result(result), error: (err) => this.error(err), complete: () => this.complete() },
      ...rest,
    );
  }

  /** Handle one GraphQL execution result ({data, errors}). */
  result(result) {
    if (this.finished) return;
    if (result && result.errors && result.errors.length) {
      line(JSON.stringify({ errors: result.errors }));
      this.exit(2, 'error result');
      return;
    }
    const event = result && result.data ? result.data[this.opts.sub.field] : undefined;
    if (!event) {
      line(JSON.stringify({ unexpected: result }));
      this.exit(2, 'result without event');
      return;
    }
    line(JSON.stringify({ event }));
    this.received++;
    if (this.received === this.opts.count) this.startLinger();
    else if (this.received > this.opts.count) this.exit(3, `extra event (#${this.received}, expected ${this.opts.count})`);
  }

  error(err) {
    if (this.finished) return;
    line(JSON.stringify({ transportError: describe(err) }));
    this.exit(2, `transport error: ${describe(err)}`);
  }

  complete() {
    if (this.finished) return;
    this.exit(4, `subscription completed early after ${this.received} events`);
  }

  startLinger() {
    setTimeout(async () => {
      if (this.finished) return;
      try {
        await this.afterEvents();
      } catch (err) {
        this.exit(2, `follow-up failed: ${describe(err)}`);
        return;
      }
      line('DONE');
      this.exit(0);
    }, this.opts.linger);
  }

  async exit(code, message) {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.timer);
    if (message) process.stderr.write(`${message}\n`);
    try {
      await Promise.race([this.cleanup(), new Promise((resolve) => setTimeout(resolve, 2000))]);
    } catch (err) {
      process.stderr.write(`cleanup failed: ${describe(err)}\n`);
    }
    process.exitCode = code;
    // Give the client a moment to flush its goodbye frames, then leave regardless.
    setTimeout(() => process.exit(code), 100).unref();
  }
}

/** The graphql-ws client the urql and Apollo scripts hand their subscriptions to. */
export function graphqlWsClient(opts, collector) {
  return createWsClient({
    url: opts.wsUrl,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    shouldRetry: () => false,
    on: { connected: () => collector.ready() },
  });
}
