// The chat demo, played by two users with graphql-ws (driven by tests/test_interop.py).
//
// Usage: node chat.mjs --url http://127.0.0.1:PORT --room ROOM --alice TOKEN --bob TOKEN [--timeout MS]
// (tokens may be empty: demo mode). Alice and Bob join the room's presence, Bob opens a
// second tab and closes it, Alice types (publish with echo: false, updatePresence),
// Bob sends a message (createChatMessage over his WebSocket), Bob leaves.
//
// stdout, one JSON line each, in the order received:
//   {"step": name}                            the script is about to do this
//   {"who": user, "op": op, "data": {...}}    an event of one of the user's operations
//                                             (presence, channel: channelEvents, messages:
//                                             chatMessageEvents, call: a mutation's result)
//   DONE                                      the scenario ran (exit 0)
// Exit codes: 0 ok; 2 an error result or a transport error; 124 a wait timed out.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const opts = { timeout: '10000', alice: '', bob: '' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1] ?? '';
const url = new URL(opts.url);
if (url.hostname !== '127.0.0.1') fail(`refusing non-loopback url ${opts.url}`, 2);
const wsUrl = `${opts.url.replace(/^http/, 'ws').replace(/\/+$/, '')}/graphql`;
const channel = `room:${opts.room}`;
const TIMEOUT = Number(opts.timeout);
const clients = [];

function line(value) {
  process.stdout.write(`${typeof value === 'string' ? value : JSON.stringify(value)}\n`);
}

function fail(message, code = 2) {
  process.stderr.write(`${message}\n`);
  for (const client of clients) client.terminate();
  process.exit(code);
}

const PRESENCE = `subscription($c: String!, $m: JSON) { presence(channel: $c, meta: $m) {
  kind count members { sub connections meta } member { sub connections meta } } }`;
const EVENTS = 'subscription($c: [String!]!) { channelEvents(channels: $c) { channel type data sender { sub } seq } }';
// after: "0" (the log from its start): no message can slip by before the subscription is in place.
const MESSAGES = `subscription($r: String!) { chatMessageEvents(where: {room: {eq: $r}}, after: "0") {
  operation record { room author body } } }`;
const HELLO = 'mutation($c: String!) { publish(channel: $c, type: "hello") }';
const TYPING = 'mutation($c: String!, $d: JSON) { publish(channel: $c, type: "typing", data: $d, echo: false) }';
const UPDATE = 'mutation($c: String!, $m: JSON) { updatePresence(channel: $c, meta: $m) }';
const SEND = 'mutation($i: CreateChatMessageInput!) { createChatMessage(input: $i) { room author body } }';

/** One browser tab of a user: a graphql-ws client, its operations' events in queues. */
class Tab {
  constructor(who, token) {
    this.who = who;
    this.queues = new Map();
    this.waiters = new Map();
    this.client = createClient({
      url: wsUrl,
      webSocketImpl: WebSocket,
      connectionParams: token ? { authorization: `Bearer ${token}` } : {},
      retryAttempts: 0,
      lazy: false,
      onNonLazyError: (err) => fail(`${who}: connection failed: ${describe(err)}`),
    });
    clients.push(this.client);
  }

  /** Starts an operation; its results are printed and queued under `op`. Returns its stop. */
  run(op, query, variables) {
    return this.client.subscribe(
      { query, variables },
      {
        next: (result) => {
          if (result.errors) fail(`${this.who} ${op}: ${JSON.stringify(result.errors)}`);
          const data = Object.values(result.data)[0];
          line({ who: this.who, op, data });
          (this.queues.get(op) || this.queues.set(op, []).get(op)).push(data);
          for (const waiter of this.waiters.get(op) || []) waiter();
        },
        error: (err) => fail(`${this.who} ${op}: ${describe(err)}`),
        complete: () => {},
      },
    );
  }

  /**
   * The first event of `op` that `match` accepts (the events before it are dropped here;
   * the test checks every printed one), waited for at most TIMEOUT ms.
   */
  until(op, match = () => true, what = op) {
    const queue = this.queues.get(op) || this.queues.set(op, []).get(op);
    const waiters = this.waiters.get(op) || this.waiters.set(op, []).get(op);
    return new Promise((resolve) => {
      const timer = setTimeout(() => fail(`${this.who}: no ${what} within ${TIMEOUT} ms`, 124), TIMEOUT);
      const check = () => {
        while (queue.length) {
          const data = queue.shift();
          if (match(data)) {
            clearTimeout(timer);
            waiters.splice(waiters.indexOf(check), 1);
            resolve(data);
            return;
          }
        }
      };
      waiters.push(check);
      check();
    });
  }

  /** A mutation over this tab's WebSocket; resolves with its result. */
  async call(query, variables) {
    this.run('call', query, variables);
    return this.until('call');
  }
}

function describe(err) {
  if (err instanceof Error) return err.message;
  if (err && typeof err === 'object' && 'code' in err) return `close ${err.code} ${err.reason}`;
  return JSON.stringify(err);
}

const step = (name) => line({ step: name });
const kind = (k, name, connections) => (e) =>
  e.kind === k && (name === undefined || (e.member || {}).meta?.name === name) &&
  (connections === undefined || e.member.connections === connections);
const type = (t) => (e) => e.type === t;

step('alice joins');
const alice = new Tab('alice', opts.alice);
alice.run('presence', PRESENCE, { c: channel, m: { name: 'Alice', typing: false } });
await alice.until('presence', kind('SYNC'), 'SYNC');
alice.run('channel', EVENTS, { c: [channel] });
await alice.call(HELLO, { c: channel });
await alice.until('channel', type('hello')); // her own (echo is on by default): her channelEvents is in place
alice.run('messages', MESSAGES, { r: opts.room });

step('bob joins');
const bob = new Tab('bob', opts.bob);
const bobPresence = bob.run('presence', PRESENCE, { c: channel, m: { name: 'Bob', typing: false } });
await bob.until('presence', kind('SYNC'), 'SYNC');
await alice.until('presence', kind('JOIN', 'Bob'), 'JOIN of Bob');
bob.run('channel', EVENTS, { c: [channel] });
await bob.call(HELLO, { c: channel });
await Promise.all([bob.until('channel', type('hello')), alice.until('channel', type('hello'))]);
bob.run('messages', MESSAGES, { r: opts.room });

step('bob opens a second tab');
const bobTab2 = new Tab('bob2', opts.bob);
bobTab2.run('presence', PRESENCE, { c: channel, m: { name: 'Bob', typing: false } });
await bobTab2.until('presence', kind('SYNC'), 'SYNC');
await alice.until('presence', (e) => e.kind !== 'SYNC' && e.count === (opts.bob ? 2 : 3), 'the second tab');

step('bob closes it');
await bobTab2.client.dispose();
await alice.until('presence', (e) => e.kind !== 'JOIN' && e.count === 2 && e.member.connections < 2, 'its leave');

step('alice types');
await alice.call(TYPING, { c: channel, d: { name: 'Alice', typing: true } });
await bob.until('channel', type('typing'));
await alice.call(UPDATE, { c: channel, m: { name: 'Alice', typing: true } });
await bob.until('presence', (e) => e.kind === 'UPDATE' && e.member.meta.typing, "Alice's typing meta");

step('bob sends');
await bob.call(SEND, { i: { room: opts.room, author: 'Bob', body: 'hello Alice' } });
const sent = type('chatMessage.created');
await Promise.all([alice.until('channel', sent), bob.until('channel', sent)]);
await Promise.all([alice.until('messages'), bob.until('messages')]);

step('bob leaves');
bobPresence();
await alice.until('presence', kind('LEAVE', 'Bob'), 'LEAVE of Bob');

step('done');
await Promise.all([alice.client.dispose(), bob.client.dispose()]);
line('DONE');
process.exit(0);
