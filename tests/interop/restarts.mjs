// README "Resume without gaps" as people run it: graphql-ws created with the recipe's
// options and left to its default retry schedule, subscribeWithResume, and servers that
// stay down a few seconds between restarts. Driven by tests/test_interop.py, which keeps
// the server down while the client retries (restarts.html is the same in Chromium).
//
// Usage: node restarts.mjs --url http://127.0.0.1:PORT --count 0
// stdout, one line each (the same as restarts.html reports):
//   {"reload": [...]}   reload() ran: the tasks its query returned
//   CONNECTING          the client tries to connect (the first time, or a retry)
//   CONNECTED           it connected
//   {"event": {...}}    one event
//   {"error": "..."}    the subscription failed: the client gave up
// Runs until stdin closes, then disposes the client and exits 0.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { keepRetrying, subscribeWithResume } from '../../tidings/clients/resume.mjs';
import { line, parseArgs } from './common.mjs';

// graphql-ws takes the global WebSocket, as in a browser; node 20 has none.
globalThis.WebSocket ??= WebSocket;

const opts = parseArgs();
const url = opts.httpUrl;
const wsUrl = opts.wsUrl;

function replaceAll(tasks) {
  line(JSON.stringify({ reload: tasks }));
}

function apply(event) {
  line(JSON.stringify({ event }));
}

console.error = (message, err) => line(JSON.stringify({ error: String(err?.message ?? err?.type ?? err ?? message) }));

// --- README.md "Resume without gaps", the client, verbatim (tests/test_interop.py checks) ---
const client = createClient({ url: wsUrl, ...keepRetrying }); // wsUrl: 'ws://127.0.0.1:8000/graphql'
// --- end of the README block ---
client.on('connecting', () => line('CONNECTING'));
client.on('connected', () => line('CONNECTED'));

// --- README.md "Resume without gaps", the recipe, verbatim ---
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

process.stdin.on('end', async () => {
  stop();
  // graphql-ws's dispose() rejects with the normal closure if the client is between attempts.
  await client.dispose().catch(() => {});
  process.exit(0);
});
process.stdin.resume();
