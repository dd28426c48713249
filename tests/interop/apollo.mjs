// @apollo/client 4: ApolloClient with an InMemoryCache, subscriptions through
// GraphQLWsLink (graphql-ws), everything else through HttpLink.
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
import { map } from 'rxjs';
import { Collector, graphqlWsClient, line, parseArgs } from './common.mjs';

const opts = parseArgs();
const collector = new Collector(opts);

const wsClient = graphqlWsClient(opts, collector);

// README "Resume without gaps" (Apollo Client), verbatim:
let cursor = null; // extensions.cursor of the latest query response (extensions.seq beside it)
const cursorLink = new ApolloLink((operation, forward) =>
  forward(operation).pipe(
    map((result) => {
      if (result.extensions?.cursor) cursor = result.extensions.cursor;
      return result;
    }),
  ),
);

const link = ApolloLink.split(
  ({ query }) => {
    const definition = getMainDefinition(query);
    return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
  },
  new GraphQLWsLink(wsClient),
  ApolloLink.from([cursorLink, new HttpLink({ uri: opts.httpUrl })]),
);

const client = new ApolloClient({ link, cache: new InMemoryCache() });

const subscription = client
  .subscribe({ query: gql(opts.sub.query), variables: opts.sub.variables })
  .subscribe({
    next: (result) => {
      if (result.error) {
        if (result.error.errors) collector.result({ errors: result.error.errors });
        else collector.error(result.error);
        return;
      }
      collector.result({ data: result.data });
    },
    error: (err) => collector.error(err),
    complete: () => collector.complete(),
  });

collector.afterEvents = async () => {
  const result = await client.query({ query: gql(opts.sub.followUp), fetchPolicy: 'network-only' });
  if (result.error) throw result.error;
  line(JSON.stringify({ query: result.data[opts.sub.followUpField] }));
  line(JSON.stringify({ cursor }));
};

collector.cleanup = async () => {
  subscription.unsubscribe();
  client.stop();
  await wsClient.dispose();
};
