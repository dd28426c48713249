// tidings' chat demo (/playground/chat): rooms and messages (the demo's Room and
// ChatMessage collections), typing indicators (channel events, echo: false) and who is
// here (presence, meta {name, typing}), every operation over one WebSocket.
//
// The graphql-transport-ws client below is written out rather than bundled: the page
// stays two small files anyone can read and copy, needs no build step, and sends its
// mutations over the same socket as its subscriptions, which updatePresence and
// publish(echo: false) need (they act on "this connection").
'use strict';

(() => {
  const config = JSON.parse(document.getElementById('tidings-chat-config').textContent);
  const wsUrl = new URL(config.endpoint, window.location.href);
  wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
  const $ = (id) => document.getElementById(id);

  // -- graphql-transport-ws ---------------------------------------------------------

  /** Opens a socket and resolves once the server acknowledged connection_init. */
  function connect(url, payload, onClose) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, 'graphql-transport-ws');
      const ops = new Map();
      let acked = false;
      let nextId = 1;
      const send = (message) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(message));
      const conn = {
        subscribe(query, variables, sink) {
          const id = String(nextId++);
          ops.set(id, sink);
          send({ id, type: 'subscribe', payload: { query, variables } });
          return () => ops.delete(id) && send({ id, type: 'complete' });
        },
        request(query, variables) {
          return new Promise((done, fail) => {
            let result;
            conn.subscribe(query, variables, {
              next: (r) => (result = r),
              error: (errors) => fail(new Error(errors.map((e) => e.message).join('; '))),
              complete: () => (result && result.errors ? fail(new Error(result.errors[0].message)) : done(result)),
            });
          });
        },
        close: () => ws.close(1000, 'bye'),
      };
      ws.onopen = () => send({ type: 'connection_init', payload });
      ws.onmessage = (event) => {
        const message = JSON.parse(event.data);
        const op = ops.get(message.id);
        if (message.type === 'connection_ack') {
          acked = true;
          resolve(conn);
        } else if (message.type === 'ping') send({ type: 'pong' });
        else if (message.type === 'next' && op) op.next(message.payload);
        else if (message.type === 'error' && op) ops.delete(message.id) && op.error(message.payload);
        else if (message.type === 'complete' && op) ops.delete(message.id) && op.complete();
      };
      ws.onclose = (event) => {
        const why = `WebSocket closed with ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
        for (const op of ops.values()) op.error([{ message: why }]);
        ops.clear();
        if (acked) onClose(why);
        else reject(new Error(why));
      };
    });
  }

  // -- the chat -------------------------------------------------------------------------

  const MESSAGE = 'id author body createdAt';
  const state = { conn: null, name: '', room: '', stops: [], members: new Map(), typing: new Map(), seen: new Set() };
  let typingTimer = null;
  let typingOn = false;

  function status(text, isError = false) {
    $('chat-status').textContent = text;
    $('chat-status').className = isError ? 'error' : '';
  }

  function showMessage(m) {
    if (state.seen.has(m.id)) return;
    state.seen.add(m.id);
    const row = document.createElement('li');
    row.className = 'chat-message';
    const who = document.createElement('b');
    who.textContent = m.author;
    row.append(who, document.createTextNode(` ${m.body}`));
    row.title = m.createdAt;
    $('chat-messages').append(row);
    row.scrollIntoView({ block: 'end' });
  }

  function showMembers() {
    const list = $('chat-members');
    list.replaceChildren();
    for (const m of state.members.values()) {
      const meta = m.meta || {};
      const row = document.createElement('li');
      row.className = 'chat-member';
      const connections = m.connections > 1 ? ` (${m.connections} tabs)` : '';
      row.textContent = `${meta.name || m.sub || 'anonymous'}${connections}${meta.typing ? ' ✎' : ''}`;
      list.append(row);
    }
    $('chat-count').textContent = String(state.members.size);
    const names = [...state.typing.keys()];
    $('chat-typing').textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…` : '';
  }

  function onPresence(result) {
    const event = result.data && result.data.presence;
    if (!event) return status(result.errors ? result.errors[0].message : 'presence failed', true);
    const key = (m) => (m.sub !== null ? m.sub : `#${m.connection}`);
    if (event.kind === 'SYNC') state.members = new Map(event.members.map((m) => [key(m), m]));
    else if (event.kind === 'LEAVE') state.members.delete(key(event.member));
    else state.members.set(key(event.member), event.member);
    showMembers();
  }

  function onTyping(result) {
    const event = result.data && result.data.channelEvents;
    if (!event || !event.data) return;
    const name = String(event.data.name || (event.sender && event.sender.sub) || 'someone');
    clearTimeout(state.typing.get(name));
    if (event.data.typing) state.typing.set(name, setTimeout(() => state.typing.delete(name) && showMembers(), 5000));
    else state.typing.delete(name);
    showMembers();
  }

  async function setTyping(on) {
    if (on === typingOn || !state.conn) return;
    typingOn = on;
    const channel = `room:${state.room}`;
    const data = { name: state.name, typing: on };
    await Promise.all([
      state.conn.request(
        'mutation($c: String!, $d: JSON) { publish(channel: $c, type: "typing", data: $d, echo: false) }',
        { c: channel, d: data },
      ),
      state.conn.request('mutation($c: String!, $m: JSON) { updatePresence(channel: $c, meta: $m) }', {
        c: channel,
        m: data,
      }),
    ]).catch((err) => status(err.message, true));
  }

  function leaveRoom() {
    for (const stop of state.stops) stop();
    state.stops = [];
    state.members.clear();
    state.typing.clear();
    state.seen.clear();
    $('chat-messages').replaceChildren();
    typingOn = false;
  }

  async function enterRoom(room) {
    leaveRoom();
    state.room = room;
    $('chat-room-name').textContent = room;
    for (const button of document.querySelectorAll('#chat-rooms button')) {
      button.setAttribute('aria-pressed', String(button.dataset.room === room));
    }
    const { conn } = state;
    const channel = `room:${room}`;
    const fail = (errors) => status(errors.map((e) => e.message).join('; '), true);
    state.stops.push(
      conn.subscribe(
        `subscription($c: String!, $m: JSON) { presence(channel: $c, meta: $m) {
           kind count members { sub connection connections meta } member { sub connection connections meta } } }`,
        { c: channel, m: { name: state.name, typing: false } },
        { next: onPresence, error: fail, complete: () => {} },
      ),
      conn.subscribe(
        'subscription($c: [String!]!) { channelEvents(channels: $c, types: ["typing"]) { type data sender { sub } } }',
        { c: [channel] },
        { next: onTyping, error: fail, complete: () => {} },
      ),
    );
    // The last 50 messages, then every one written after them: the query says which
    // event-log position it reflects (extensions.cursor), the subscription resumes there.
    const history = await conn.request(
      `query($r: String!) { chatMessages(where: {room: {eq: $r}}, orderBy: [{createdAt: DESC}], limit: 50) { ${MESSAGE} } }`,
      { r: room },
    );
    if (state.room !== room) return;
    history.data.chatMessages.reverse().forEach(showMessage);
    const cursor = history.extensions && history.extensions.cursor;
    state.stops.push(
      conn.subscribe(
        `subscription($r: String!, $after: String) {
           chatMessageEvents(where: {room: {eq: $r}}, operations: [CREATED], after: $after) { record { ${MESSAGE} } } }`,
        { r: room, after: cursor || null },
        { next: (r) => r.data && showMessage(r.data.chatMessageEvents.record), error: fail, complete: () => {} },
      ),
    );
    status(`In ${room} as ${state.name}`);
  }

  function addRoom(name) {
    if (document.querySelector(`#chat-rooms button[data-room="${CSS.escape(name)}"]`)) return;
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.room = name;
    button.textContent = name;
    button.onclick = () => enterRoom(name).catch((err) => status(err.message, true));
    item.append(button);
    $('chat-rooms').append(item);
  }

  async function join(event) {
    event.preventDefault();
    state.name = $('chat-name').value.trim() || 'guest';
    const token = config.auth ? $('chat-token').value.trim() : '';
    status('Connecting…');
    try {
      const payload = token ? { authorization: `Bearer ${token.replace(/^Bearer\s+/i, '')}` } : {};
      state.conn = await connect(wsUrl.href, payload, (why) => {
        state.conn = null;
        leaveRoom();
        $('chat-main').hidden = true;
        $('chat-join').hidden = false;
        status(`${why}; join again to reconnect`, true);
      });
    } catch (err) {
      return status(err.message, true);
    }
    $('chat-join').hidden = true;
    $('chat-main').hidden = false;
    try {
      const rooms = await state.conn.request('{ rooms(orderBy: [{name: ASC}], limit: 100) { name } }', {});
      addRoom('lobby');
      rooms.data.rooms.forEach((r) => addRoom(r.name));
      state.conn.subscribe('subscription { roomEvents(operations: [CREATED]) { record { name } } }', {}, {
        next: (r) => r.data && addRoom(r.data.roomEvents.record.name),
        error: () => {},
        complete: () => {},
      });
      await enterRoom('lobby');
    } catch (err) {
      status(err.message, true);
    }
  }

  async function send(event) {
    event.preventDefault();
    const input = $('chat-input');
    const body = input.value.trim();
    if (!body || !state.conn) return;
    input.value = '';
    clearTimeout(typingTimer);
    try {
      await state.conn.request(
        'mutation($i: CreateChatMessageInput!) { createChatMessage(input: $i) { id } }',
        { i: { room: state.room, author: state.name, body } },
      );
      await setTyping(false);
    } catch (err) {
      status(err.message, true);
    }
  }

  async function newRoom(event) {
    event.preventDefault();
    const name = $('chat-new-room').value.trim();
    if (!/^[A-Za-z0-9_.-]{1,40}$/.test(name)) return status('A room name is 1 to 40 letters, digits, _ . -', true);
    $('chat-new-room').value = '';
    try {
      if (!document.querySelector(`#chat-rooms button[data-room="${CSS.escape(name)}"]`)) {
        await state.conn.request('mutation($i: CreateRoomInput!) { createRoom(input: $i) { id } }', { i: { name } });
      }
      addRoom(name);
      await enterRoom(name);
    } catch (err) {
      status(err.message, true);
    }
  }

  $('chat-token-row').hidden = !config.auth;
  $('chat-name').value = `guest-${Math.random().toString(36).slice(2, 6)}`;
  $('chat-join').addEventListener('submit', join);
  $('chat-send').addEventListener('submit', send);
  $('chat-room-form').addEventListener('submit', newRoom);
  $('chat-input').addEventListener('input', () => {
    clearTimeout(typingTimer);
    if ($('chat-input').value) {
      setTyping(true);
      typingTimer = setTimeout(() => setTyping(false), 3000);
    } else setTyping(false);
  });
  window.__tidingsChat = { state, config };
})();
