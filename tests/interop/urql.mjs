// @urql/core Client: subscriptions through subscriptionExchange -> graphql-ws client,
// queries through fetchExchange (HTTP POST).
import { Client, fetchExchange, subscriptionExchange } from '@urql/core';
import { Collector, graphqlWsClient, line, parseArgs } from './common.mjs';

// urql's fetchExchange aborts its fetch when the operation is torn down; when the
// response has already been read, node's fetch (undici) rejects a promise nobody
// awaits with an AbortError. That is client-side teardown noise, not a failed
// request: ignore exactly that, and let every other unhandled rejection crash.
process.on('unhandledRejection', (err) => {
  if (err && err.name === 'AbortError') return;
  throw err;
});

const opts = parseArgs();
const collector = new Collector(opts);

const wsClient = graphqlWsClient(opts, collector);

const client = new Client({
  url: opts.httpUrl,
  requestPolicy: 'network-only',
  exchanges: [
    fetchExchange,
    subscriptionExchange({
      forwardSubscription(request) {
        const input = { ...request, query: request.query || '' };
        return {
          subscribe(sink) {
            const unsubscribe = wsClient.subscribe(input, sink);
            return { unsubscribe };
          },
        };
      },
    }),
  ],
});

const { unsubscribe } = client
  .subscription(opts.sub.query, opts.sub.variables)
  .subscribe((result) => {
    if (result.error) {
      if (result.error.networkError) collector.error(result.error.networkError);
      else collector.result({ errors: result.error.graphQLErrors });
      return;
    }
    collector.result({ data: result.data });
  });

// After the events: a query through fetchExchange, so HTTP interop is covered too.
collector.afterEvents = async () => {
  const result = await client.query(opts.sub.followUp, {}).toPromise();
  if (result.error) throw result.error;
  line(JSON.stringify({ query: result.data[opts.sub.followUpField] }));
};

collector.cleanup = async () => {
  unsubscribe();
  await wsClient.dispose();
};
