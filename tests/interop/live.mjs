// A live query (query @live) through @n1ru4l/graphql-live-query-patch-json-patch's
// applyLiveQueryJSONPatch (driven by tests/test_interop.py): straight over graphql-ws or
// graphql-sse, or as a query of @urql/core (subscriptionExchange) or Apollo Client
// (watchQuery, through a link) whose transport is graphql-ws.
//
// Usage: node live.mjs --url http://127.0.0.1:PORT
//                      --client graphql-ws|graphql-sse|graphql-sse-single|urql|apollo --count N [--timeout MS]
//
// After every result the client rebuilds, the script runs the same document without
// @live over plain HTTP and prints one line:
//   {"revision": n, "seq": "...", "equal": true|false, "live": {...}, "fresh": {...}}
// The Python side makes one mutation at a time and waits for its line, so the fresh
// query sees exactly the state the live result should. After N results: DONE, exit 0.
// Exit codes: 0 ok; 2 error; 124 timeout.
import { applyLiveQueryJSONPatch } from '@n1ru4l/graphql-live-query-patch-json-patch';
import { createClient as createSseClient } from 'graphql-sse';
import { createClient as createWsClient } from 'graphql-ws';
import WebSocket from 'ws';
import { fail, line } from './common.mjs';

export const LIVE = `query Board @live {
  tasks(where: {status: {eq: "open"}}, orderBy: [{priority: DESC}], limit: 3) { __typename id title priority }
  openCount: tasksCount(where: {status: {eq: "open"}})
}`;
const PLAIN = LIVE.replace(' @live', '');

const opts = { timeout: 15000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
const url = new URL(opts.url || '');
if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) fail(`refusing non-loopback url ${opts.url}`, 2);
const httpUrl = `${opts.url.replace(/\/+$/, '')}/graphql`;
const count = Number(opts.count);

const timer = setTimeout(() => fail('timed out', 124), Number(opts.timeout));

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

async function fresh() {
  const response = await fetch(httpUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query: PLAIN }),
  });
  const body = await response.json();
  if (body.errors) fail(`plain query failed: ${JSON.stringify(body.errors)}`, 2);
  return body.data;
}

let client;
let source;
if (opts.client === 'graphql-ws') {
  client = createWsClient({ url: httpUrl.replace(/^http/, 'ws'), webSocketImpl: WebSocket, retryAttempts: 0 });
  source = client.iterate({ query: LIVE });
} else if (opts.client === 'graphql-sse' || opts.client === 'graphql-sse-single') {
  client = createSseClient({ url: httpUrl, singleConnection: opts.client === 'graphql-sse-single', retryAttempts: 0 });
  source = client.iterate({ query: LIVE });
} else if (opts.client === 'urql') {
  // urql: the live query goes through subscriptionExchange (any operation with @live), whose
  // forwardSubscription feeds graphql-ws results through applyLiveQueryJSONPatch.
  const { Client, fetchExchange, subscriptionExchange } = await import('@urql/core');
  const wsClient = createWsClient({ url: httpUrl.replace(/^http/, 'ws'), webSocketImpl: WebSocket, retryAttempts: 0 });
  const urql = new Client({
    url: httpUrl,
    requestPolicy: 'network-only',
    exchanges: [
      subscriptionExchange({
        isSubscriptionOperation: (op) => op.kind === 'subscription' || /@live\b/.test(op.query.loc?.source.body ?? ''),
        forwardSubscription(request) {
          const patched = applyLiveQueryJSONPatch(wsClient.iterate({ ...request, query: request.query || '' }));
          return {
            subscribe(sink) {
              (async () => {
                try {
                  for await (const result of patched) sink.next(result);
                  sink.complete();
                } catch (err) {
                  sink.error(err);
                }
              })();
              return { unsubscribe: () => patched.return?.() };
            },
          };
        },
      }),
      fetchExchange,
    ],
  });
  client = { dispose: () => wsClient.dispose() };
  source = (async function* results() {
    const waiting = [];
    let wake = () => {};
    urql.query(LIVE, {}).subscribe((result) => {
      waiting.push(result.error ? { errors: [String(result.error)] } : { data: result.data, extensions: result.extensions });
      wake();
    });
    while (true) {
      while (waiting.length) yield waiting.shift();
      await new Promise((resolve) => {
        wake = resolve;
      });
    }
  })();
} else if (opts.client === 'apollo') {
  // Apollo Client: a link that serves @live operations from graphql-ws through applyLiveQueryJSONPatch.
  const { ApolloClient, ApolloLink, InMemoryCache, gql } = await import('@apollo/client');
  const { Observable } = await import('rxjs');
  const wsClient = createWsClient({ url: httpUrl.replace(/^http/, 'ws'), webSocketImpl: WebSocket, retryAttempts: 0 });
  const { print } = await import('graphql');
  let lastExtensions = {};
  const liveLink = new ApolloLink(
    (operation) =>
      new Observable((observer) => {
        const patched = applyLiveQueryJSONPatch(
          wsClient.iterate({ query: print(operation.query), variables: operation.variables }),
        );
        (async () => {
          try {
            for await (const result of patched) {
              lastExtensions = result.extensions; // watchQuery's results leave extensions out
              observer.next(result);
            }
            observer.complete();
          } catch (err) {
            observer.error(err);
          }
        })();
        return () => patched.return?.();
      }),
  );
  const apollo = new ApolloClient({ link: liveLink, cache: new InMemoryCache() });
  client = { dispose: () => wsClient.dispose() };
  source = (async function* results() {
    const waiting = [];
    let wake = () => {};
    apollo.watchQuery({ query: gql(LIVE), fetchPolicy: 'no-cache' }).subscribe({
      next: (result) => {
        if (result.loading) return;
        waiting.push(result.error ? { errors: [String(result.error)] } : { data: result.data, extensions: lastExtensions });
        wake();
      },
      error: (err) => {
        waiting.push({ errors: [String(err)] });
        wake();
      },
    });
    while (true) {
      while (waiting.length) yield waiting.shift();
      await new Promise((resolve) => {
        wake = resolve;
      });
    }
  })();
} else {
  fail(`unknown --client ${opts.client}`, 2);
}

let revision = 0;
try {
  for await (const result of applyLiveQueryJSONPatch(source)) {
    if (result.errors) fail(`live query failed: ${JSON.stringify(result.errors)}`, 2);
    revision += 1;
    const expected = await fresh();
    line(
      JSON.stringify({
        revision,
        seq: result.extensions?.seq,
        equal: canonical(result.data) === canonical(expected),
        live: result.data,
        fresh: expected,
      }),
    );
    if (revision === count) break;
  }
} catch (err) {
  fail(`live query failed: ${err?.message ?? err}`, 2);
}
line('DONE');
clearTimeout(timer);
await client.dispose();
process.exit(0);
