// graphql-ws (graphql-transport-ws protocol) client against tidings.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { Collector, parseArgs } from './common.mjs';

const opts = parseArgs();
const collector = new Collector(opts);

const client = createClient({
  url: opts.wsUrl,
  webSocketImpl: WebSocket,
  lazy: true,
  retryAttempts: 0,
  shouldRetry: () => false,
  on: {
    // With a lazy client, `connected` means connection_ack arrived; the subscribe
    // frame is sent right after it.
    connected: () => collector.ready(),
    closed: (event) => {
      if (!collector.finished) collector.error(event);
    },
  },
});

const unsubscribe = collector.subscribe(client);

collector.cleanup = async () => {
  unsubscribe();
  await client.dispose();
};
