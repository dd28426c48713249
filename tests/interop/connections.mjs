// Cursor connections through @urql/core and Apollo Client (driven by tests/test_interop.py):
// page through tasksConnection(first, after) until hasNextPage is false, forward, then backward
// with last/before. Apollo keeps the pages in its InMemoryCache with relayStylePagination
// (fetchMore merges each page into one list, as an app's "load more" does); urql pages over HTTP.
//
// Usage: node connections.mjs --url http://127.0.0.1:PORT --client urql|apollo --status S --size N
// stdout: {"forward": [ids...], "backward": [ids...], "totalCount": n}, then DONE. Exit 2 on error.
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { relayStylePagination } from '@apollo/client/utilities';
import { Client, fetchExchange } from '@urql/core';
import { fail, line } from './common.mjs';

const opts = { timeout: 15000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
const url = new URL(opts.url || '');
if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) fail(`refusing non-loopback url ${opts.url}`, 2);
const httpUrl = `${opts.url.replace(/\/+$/, '')}/graphql`;
const size = Number(opts.size);
const timer = setTimeout(() => fail('timed out', 124), Number(opts.timeout));

const PAGE = `query Page($status: String!, $first: Int, $after: String, $last: Int, $before: String) {
  tasksConnection(where: {status: {eq: $status}}, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { id title } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    totalCount
  }
}`;

async function pagesWith(run) {
  const forward = [];
  let after = null;
  let totalCount = null;
  for (;;) {
    const c = await run({ status: opts.status, first: size, after });
    forward.push(...c.edges.map((e) => e.node.id));
    totalCount = c.totalCount;
    if (!c.pageInfo.hasNextPage) break;
    after = c.pageInfo.endCursor;
  }
  const backward = [];
  let before = null;
  for (;;) {
    const c = await run({ status: opts.status, last: size, before });
    backward.unshift(...c.edges.map((e) => e.node.id));
    if (!c.pageInfo.hasPreviousPage) break;
    before = c.pageInfo.startCursor;
  }
  return { forward, backward, totalCount };
}

try {
  let result;
  if (opts.client === 'urql') {
    const client = new Client({ url: httpUrl, requestPolicy: 'network-only', exchanges: [fetchExchange] });
    result = await pagesWith(async (variables) => {
      const { data, error } = await client.query(PAGE, variables).toPromise();
      if (error) throw error;
      return data.tasksConnection;
    });
  } else if (opts.client === 'apollo') {
    const cache = new InMemoryCache({
      typePolicies: { Query: { fields: { tasksConnection: relayStylePagination(['where']) } } },
    });
    const client = new ApolloClient({ link: new HttpLink({ uri: httpUrl }), cache });
    const query = gql(PAGE);
    // Forward: one watched query, then fetchMore per page; the cache merges the edges.
    const first = await client.query({ query, variables: { status: opts.status, first: size } });
    let merged = first.data.tasksConnection;
    while (merged.pageInfo.hasNextPage) {
      const more = await client.query({
        query,
        variables: { status: opts.status, first: size, after: merged.pageInfo.endCursor },
        fetchPolicy: 'network-only',
      });
      merged = cache.readQuery({ query, variables: { status: opts.status, first: size } }).tasksConnection;
      if (!more.data) throw new Error('no data');
    }
    const forward = merged.edges.map((e) => e.node.id);
    // Backward, page by page from the network (no-cache: each answer as it came, not merged).
    const { backward, totalCount } = await pagesWith(async (variables) => {
      const { data, error } = await client.query({ query, variables, fetchPolicy: 'no-cache' });
      if (error) throw error;
      return data.tasksConnection;
    });
    result = { forward, backward, totalCount, cacheTypename: merged.edges[0]?.node.__typename ?? null };
    client.stop();
  } else {
    fail(`unknown --client ${opts.client}`, 2);
  }
  line(JSON.stringify(result));
  clearTimeout(timer);
  line('DONE');
} catch (err) {
  fail(`connections failed: ${err?.stack || err}`, 2);
}
