// README "Resume without gaps": subscribeWithResume (tidings/clients/resume.mjs) over
// graphql-ws or graphql-sse, across a server restart. Driven by tests/test_interop.py.
//
// Usage: node resume.mjs --url http://127.0.0.1:PORT --transport graphql-ws|graphql-sse|graphql-sse-single
//                        --count N [--timeout MS] [--linger MS]
// stdout, besides common.mjs's READY / {"event": ...} / DONE:
//   {"reload": [...]}   reload() ran: the tasks its query returned
//   RETRY               the client lost its connection and waits for a line on stdin
//   CONNECTED           the client (re)connected
// Each client retries on its own; its retry wait lasts until the test writes a line on
// stdin ("GO", once the next server is up), so events published meanwhile are the gap.
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';
import WebSocket from 'ws';
import { subscribeWithResume } from '../../tidings/clients/resume.mjs';
import { Collector, fail, line, parseArgs } from './common.mjs';

const opts = parseArgs();
const collector = new Collector(opts);

let go = null;
const released = new Promise((resolve) => (go = resolve));
process.stdin.setEncoding('utf8');
process.stdin.on('data', () => go());
async function retryWait() {
  line('RETRY');
  await released;
  await new Promise((resolve) => setTimeout(resolve, 50)); // later retries (server not up yet): brief pauses
}

const url = opts.httpUrl;
let client;
if (opts.transport === 'graphql-ws') {
  client = createWsClient({
    url: opts.wsUrl,
    webSocketImpl: WebSocket,
    retryAttempts: 50,
    retryWait,
    on: { connected: () => line('CONNECTED') },
  });
} else if (opts.transport === 'graphql-sse' || opts.transport === 'graphql-sse-single') {
  client = createSseClient({
    url,
    singleConnection: opts.transport === 'graphql-sse-single',
    retryAttempts: 50,
    retry: retryWait,
    on: { connected: () => line('CONNECTED') },
  });
} else {
  fail(`unknown --transport ${opts.transport}`);
}

function replaceAll(tasks) {
  line(JSON.stringify({ reload: tasks }));
  collector.ready();
}

// The README block's error handler logs: here any error fails the run at once.
console.error = (message, err) => collector.error(err ?? message);

function apply(event) {
  collector.result({ data: { taskEvents: event } });
}

// --- README.md "Resume without gaps", the JavaScript block, verbatim (tests/test_interop.py checks) ---
async function reload() { // the first time, and after CURSOR_INVALID or CURSOR_EXPIRED
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query: '{ tasks { id title } }' }),
  });
  const { data, extensions } = await response.json();
  replaceAll(data.tasks); // your code: show these
  return extensions.cursor;
}

const stop = subscribeWithResume(
  client,
  { query: 'subscription($after: String) { taskEvents(after: $after) { cursor seq operation record { id title } } }' },
  {
    next: ({ data }) => apply(data.taskEvents), // your code: apply one event
    error: (err) => console.error('subscription failed', err),
    complete: () => {},
  },
  { reload },
);
// --- end of the README block ---

collector.cleanup = async () => {
  stop();
  process.stdin.destroy();
  await client.dispose();
};
