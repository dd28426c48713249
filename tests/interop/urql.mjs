// @urql/core Client: subscriptions through subscriptionExchange -> graphql-ws client,
// queries through fetchExchange (HTTP POST).
import { Client, fetchExchange, subscriptionExchange } from '@urql/core';
import { Collector, graphqlWsClient, line, parseArgs } from './common.mjs';

// urql's defaults throughout: its Accept header lists text/event-stream beside the JSON
// types, and tidings must still answer its queries as JSON (an SSE answer makes the
// fetch outlive toPromise() and node die on an unhandled AbortError).

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
  // README "Resume without gaps" (urql), verbatim:
  const { data, extensions } = await client.query('{ tasks { id title } }', {}).toPromise();
  // extensions.cursor: subscribe with after: it, and apply events on top of data
  line(JSON.stringify({ cursor: extensions.cursor, seq: extensions.seq, tasks: data.tasks.length }));
};

collector.cleanup = async () => {
  unsubscribe();
  await wsClient.dispose();
};
