// graphql-sse client, single connection mode: PUT reservation -> token, GET event
// stream with the token, POST operations (202) carrying extensions.operationId,
// DELETE ?operationId= to stop one.
import { createClient } from 'graphql-sse';
import { Collector, parseArgs } from './common.mjs';

const opts = parseArgs();
const collector = new Collector(opts);

const client = createClient({
  url: opts.httpUrl,
  singleConnection: true,
  lazy: true,
  retryAttempts: 0,
  on: {
    // Emitted once the GET stream for the reserved token is open; the operation is
    // POSTed right after.
    connected: () => collector.ready(),
  },
});

const unsubscribe = collector.subscribe(client);

collector.cleanup = async () => {
  unsubscribe();
  // Let the DELETE ?operationId= request go out before the stream is torn down.
  await new Promise((resolve) => setTimeout(resolve, 200));
  client.dispose();
};
