// graphql-sse client, distinct connections mode (one event stream per operation).
import { createClient } from 'graphql-sse';
import { Collector, parseArgs } from './common.mjs';

const opts = parseArgs();
const collector = new Collector(opts);

const client = createClient({
  url: opts.httpUrl,
  singleConnection: false,
  retryAttempts: 0,
});

const unsubscribe = collector.subscribe(
  client,
  {
    // Emitted once the server answered the POST with a 200 text/event-stream response.
    connected: () => collector.ready(),
  },
);

collector.cleanup = async () => {
  unsubscribe();
  client.dispose();
};
