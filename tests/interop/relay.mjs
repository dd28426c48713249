// relay-runtime's Environment against tidings (driven by tests/test_interop.py): the artifacts
// relay-compiler made from RelayTidings.js over `tidings export-schema`, a query of a connection
// (@connection), a subscription to taskEvents through a graphql-ws subscribe function, and a
// createTask mutation, all in one store.
//
// Usage: node relay.mjs --url http://127.0.0.1:PORT --artifacts DIR --status S [--timeout MS]
// stdout, one line each: {"query": [...]} (the page's node ids), READY (subscribed: the Python
// side waits for the server to hold it, then writes GO on stdin), {"store": {...}} (what the
// store holds after the mutation and its event), DONE.
// Every console.error/console.warn (where Relay's dev-mode warnings go) fails the run.
// Exit codes: 0 ok; 2 error; 3 a store warning; 124 timeout.
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';
import { createClient } from 'graphql-ws';
import relay from 'relay-runtime';
import WebSocket from 'ws';
import { fail, line } from './common.mjs';

const { Environment, Network, Observable, RecordSource, Store, commitMutation, fetchQuery, requestSubscription } =
  relay;

const opts = { timeout: 15000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
const url = new URL(opts.url || '');
if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) fail(`refusing non-loopback url ${opts.url}`, 2);
const httpUrl = `${opts.url.replace(/\/+$/, '')}/graphql`;
const timer = setTimeout(() => fail('timed out', 124), Number(opts.timeout));

const warnings = [];
for (const level of ['error', 'warn']) {
  console[level] = (...args) => warnings.push(args.map(String).join(' '));
}

async function artifact(name) {
  const mod = await import(pathToFileURL(path.join(opts.artifacts, `${name}.graphql.js`)).href);
  return mod.default;
}

const wsClient = createClient({ url: httpUrl.replace(/^http/, 'ws'), webSocketImpl: WebSocket, retryAttempts: 0 });

async function fetchFn(operation, variables) {
  const response = await fetch(httpUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query: operation.text, variables }),
  });
  return response.json();
}

// The subscribe function of Relay's docs, over graphql-ws.
function subscribeFn(operation, variables) {
  return Observable.create((sink) =>
    wsClient.subscribe({ operationName: operation.name, query: operation.text, variables }, sink),
  );
}

const environment = new Environment({
  network: Network.create(fetchFn, subscribeFn),
  store: new Store(new RecordSource()),
});

try {
  const TasksQuery = await artifact('RelayTidingsTasksQuery');
  const CreateTask = await artifact('RelayTidingsCreateTaskMutation');
  const TaskEvents = await artifact('RelayTidingsTaskEventsSubscription');

  const page = await fetchQuery(environment, TasksQuery, { status: opts.status }).toPromise();
  line(JSON.stringify({ query: page.tasksConnection.edges.map((e) => e.node.id) }));

  let event = null;
  let eventArrived;
  const arrived = new Promise((resolve) => {
    eventArrived = resolve;
  });
  const subscription = requestSubscription(environment, {
    subscription: TaskEvents,
    variables: { where: { status: { eq: opts.status } } },
    onNext: (response) => {
      event = response.taskEvents;
      eventArrived();
    },
    onError: (err) => fail(`subscription failed: ${err}`, 2),
  });
  line('READY');
  const input = readline.createInterface({ input: process.stdin });
  for await (const text of input) if (text === 'GO') break;
  input.close();
  process.stdin.destroy(); // nothing more comes: let node exit once done

  const created = await new Promise((resolve, reject) => {
    commitMutation(environment, {
      mutation: CreateTask,
      variables: { input: { title: 'made by relay', status: opts.status } },
      onCompleted: (response, errors) => (errors ? reject(new Error(JSON.stringify(errors))) : resolve(response)),
      onError: reject,
    });
  });
  await arrived;
  const source = environment.getStore().getSource();
  const taskId = created.createTask.id;
  const task = source.get(taskId);
  const eventRecord = source.get(event.id);
  const firstNode = page.tasksConnection.edges[0]?.node.id;
  line(
    JSON.stringify({
      store: {
        eventId: event.id,
        eventRecordId: event.record.id,
        taskId,
        taskTypename: task?.__typename,
        taskTitle: task?.title,
        eventTypename: eventRecord?.__typename,
        firstNodeTypename: firstNode ? source.get(firstNode)?.__typename : null,
        typenames: [...new Set(source.getRecordIDs().map((id) => source.get(id)?.__typename))].sort(),
      },
    }),
  );
  subscription.dispose();
  await wsClient.dispose();
  if (warnings.length) {
    process.stderr.write(`${warnings.join('\n')}\n`);
    process.exit(3);
  }
  clearTimeout(timer);
  line('DONE');
} catch (err) {
  fail(`relay failed: ${err?.stack || err}`, 2);
}
