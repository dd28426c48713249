// tidings' chat demo (/playground/chat): rooms and messages, typing indicators (channel
// events, echo: false) and who is here (presence, meta {name, typing}), every operation over
// one WebSocket. Two models, as the page's config says:
//  - demo: the demo collections' Room(name) and ChatMessage(room, author, body); a room is
//    its name, its channel room:<name> is open to all;
//  - rooms: examples/rooms/collections.toml, where relation rules decide everything: a room
//    (Room) has an owner and members (Membership); only members read and post its messages
//    (Message) and join its channel room:<id> (read:Room). Removing a member ends their
//    presence and channel subscriptions with FORBIDDEN, and their messageEvents send LEFT.
//
// The graphql-transport-ws client below is written out rather than bundled: the page
// stays two small files anyone can read and copy, needs no build step, and sends its
// mutations over the same socket as its subscriptions, which updatePresence and
// publish(echo: false) need (they act on "this connection").
'use strict';

(() => {
  const config = JSON.parse(document.getElementById('tidings-chat-config').textContent);
  const ROOMS = config.model === 'rooms';
  const wsUrl = new URL(config.endpoint, window.location.href);
  wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
  const $ = (id) => document.getElementById(id);
  const ignore = () => {};

  /** GraphQL errors as one line, each with its extensions.code. */
  function describe(errors) {
    return errors.map((e) => (e.extensions && e.extensions.code ? `${e.message} (${e.extensions.code})` : e.message)).join('; ');
  }

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
              error: (errors) => fail(new Error(describe(errors))),
              complete: () => (result && result.errors ? fail(new Error(describe(result.errors))) : done(result)),
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

  // -- the two models -----------------------------------------------------------------

  const MESSAGE = 'id author body createdAt';
  const ROOM = 'id name owner';
  // Whether an event takes its record out of a list kept from events.
  const gone = (event) => event.operation === 'DELETED' || event.match === 'LEFT';

  // What differs between the models: where the rooms come from, how messages are named and
  // written, and which room to open first. Aliases (messages:, event:) give both one shape.
  const DEMO = {
    async loadRooms(conn) {
      const rooms = await conn.request('{ rooms(orderBy: [{name: ASC}], limit: 100) { name } }', {});
      putRoom({ id: 'lobby', name: 'lobby' });
      rooms.data.rooms.forEach((r) => putRoom({ id: r.name, name: r.name }));
      conn.subscribe('subscription { roomEvents(operations: [CREATED]) { record { name } } }', {}, {
        next: (r) => r.data && putRoom({ id: r.data.roomEvents.record.name, name: r.data.roomEvents.record.name }),
        error: ignore,
        complete: ignore,
      });
      return 'lobby';
    },
    async createRoom(conn, name) {
      if (!state.rooms.has(name)) {
        await conn.request('mutation($i: CreateRoomInput!) { createRoom(input: $i) { id } }', { i: { name } });
      }
      return putRoom({ id: name, name });
    },
    history: `query($r: String!) {
      messages: chatMessages(where: {room: {eq: $r}}, orderBy: [{createdAt: DESC}], limit: 50) { ${MESSAGE} } }`,
    events: `subscription($r: String!, $after: String) {
      event: chatMessageEvents(where: {room: {eq: $r}}, operations: [CREATED], after: $after) {
        operation match record { ${MESSAGE} } } }`,
    post: (room, body) => [
      'mutation($i: CreateChatMessageInput!) { createChatMessage(input: $i) { id } }',
      { i: { room, author: state.name, body } },
    ],
  };

  const RELATIONS = {
    async loadRooms(conn) {
      // The rooms this user owns or is a member of (Room's read rule), kept from roomEvents:
      // being added to a room brings it in (ENTERED), being removed takes it out (LEFT).
      const rooms = await conn.request(`{ rooms(orderBy: [{name: ASC}], limit: 100) { ${ROOM} } }`, {});
      rooms.data.rooms.forEach(putRoom);
      conn.subscribe(
        `subscription($after: String) { roomEvents(after: $after) { operation match record { ${ROOM} } } }`,
        { after: (rooms.extensions && rooms.extensions.cursor) || null },
        {
          next: (r) => {
            const event = r.data && r.data.roomEvents;
            if (!event) return;
            if (!gone(event)) return putRoom(event.record);
            if (state.entry && state.entry.room === event.record.id) removed(state.entry);
            state.rooms.delete(event.record.id);
            showRooms();
          },
          error: ignore,
          complete: ignore,
        },
      );
      // A shared link (#room=<id>) opens that room; nothing else is opened for you.
      return new URLSearchParams(window.location.hash.slice(1)).get('room');
    },
    async createRoom(conn, name) {
      const made = await conn.request(`mutation($i: CreateRoomInput!) { createRoom(input: $i) { ${ROOM} } }`, {
        i: { name },
      });
      const room = putRoom(made.data.createRoom);
      // Owning a room lets one read it and manage its members; its messages are for members
      // (Message's rules), so its owner adds themselves first, as they would anyone.
      await conn.request('mutation($i: CreateMembershipInput!) { createMembership(input: $i) { id } }', {
        i: { roomId: room.id, userId: room.owner },
      });
      return room;
    },
    history: `query($r: ID!) {
      messages(where: {roomId: {eq: $r}}, orderBy: [{createdAt: DESC}], limit: 50) { ${MESSAGE} } }`,
    events: `subscription($r: ID!, $after: String) {
      event: messageEvents(where: {roomId: {eq: $r}}, after: $after) { operation match record { ${MESSAGE} } } }`,
    post: (roomId, body) => [
      'mutation($i: CreateMessageInput!) { createMessage(input: $i) { id } }',
      { i: { roomId, body } },
    ],
  };

  const model = ROOMS ? RELATIONS : DEMO;

  // -- the chat -------------------------------------------------------------------------

  // entry: the room open now ({room, stops, joined}); roster: its memberships (id -> userId).
  const state = {
    conn: null,
    name: '',
    sub: null,
    room: '',
    entry: null,
    rooms: new Map(),
    members: new Map(),
    typing: new Map(),
    rows: new Map(),
    roster: new Map(),
  };
  let typingTimer = null;
  let typingOn = false;

  function status(text, isError = false) {
    $('chat-status').textContent = text;
    $('chat-status').title = '';
    $('chat-status').className = isError ? 'error' : '';
  }

  /** The token's sub claim (unverified: only to know which rooms are ours to manage). */
  function subOf(token) {
    try {
      return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub || null;
    } catch {
      return null;
    }
  }

  const roomName = (id) => (state.rooms.has(id) ? state.rooms.get(id).name : id);

  function showMessage(m) {
    let row = state.rows.get(m.id);
    if (!row) {
      row = document.createElement('li');
      row.className = 'chat-message';
      state.rows.set(m.id, row);
      $('chat-messages').append(row);
      row.scrollIntoView({ block: 'end' });
    }
    const who = document.createElement('b');
    who.textContent = m.author;
    row.replaceChildren(who, document.createTextNode(` ${m.body}`));
    row.title = m.createdAt;
  }

  function hideMessage(id) {
    const row = state.rows.get(id);
    if (row) row.remove();
    state.rows.delete(id);
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

  function showRooms() {
    const list = $('chat-rooms');
    list.replaceChildren();
    const rooms = [...state.rooms.values()].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    for (const room of rooms) {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.room = room.id;
      button.textContent = room.name;
      button.setAttribute('aria-pressed', String(room.id === state.room));
      button.onclick = () => enterRoom(room.id).catch((err) => status(err.message, true));
      item.append(button);
      list.append(item);
    }
    if (state.entry) $('chat-room-name').textContent = roomName(state.entry.room);
    showRoster();
  }

  function putRoom(room) {
    state.rooms.set(room.id, room);
    showRooms();
    return room;
  }

  /** The open room's owner and members; the owner may add and remove members. */
  function showRoster() {
    const room = state.entry && state.rooms.get(state.entry.room);
    const mine = Boolean(room && state.sub && room.owner === state.sub);
    $('chat-roster').hidden = !ROOMS || !state.entry;
    $('chat-add-form').hidden = !mine;
    const list = $('chat-roster-list');
    list.replaceChildren();
    if (!state.entry) return;
    // The owner first (not a member, they may manage the room but not read its messages).
    const owner = room && room.owner;
    const entries = [...state.roster].sort((a, b) => (b[1] === owner) - (a[1] === owner) || a[1].localeCompare(b[1]));
    if (owner && !entries.some(([, userId]) => userId === owner)) entries.unshift([null, owner]);
    for (const [id, userId] of entries) {
      const row = document.createElement('li');
      row.className = 'chat-roster-entry';
      const name = document.createElement('span');
      name.textContent = userId === owner ? `${userId} (owner${id === null ? ', not a member' : ''})` : userId;
      row.append(name);
      if (mine && userId !== owner) {
        const remove = document.createElement('button');
        remove.type = 'button';
        remove.className = 'chat-remove';
        remove.dataset.user = userId;
        remove.title = `Remove ${userId} from the room`;
        remove.textContent = '×';
        remove.onclick = () =>
          state.conn
            .request('mutation($id: ID!) { deleteMembership(id: $id) { id } }', { id })
            .catch((err) => status(err.message, true));
        row.append(remove);
      }
      list.append(row);
    }
  }

  function onPresence(entry, result) {
    const event = result.data && result.data.presence;
    if (!event) return result.errors && refused(entry, result.errors);
    entry.joined = true;
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
    if (on === typingOn || !state.conn || !state.entry) return;
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
    if (state.entry) for (const stop of state.entry.stops) stop();
    state.entry = null;
    state.room = '';
    state.members.clear();
    for (const timer of state.typing.values()) clearTimeout(timer);
    state.typing.clear();
    state.rows.clear();
    state.roster.clear();
    $('chat-messages').replaceChildren();
    $('chat-room-title').hidden = true;
    $('chat-room-link').hidden = true;
    $('chat-input').disabled = true;
    typingOn = false;
    showMembers();
    showRooms();
  }

  /** A FORBIDDEN on the room's channel: not a member (at join), or no longer one (removed). */
  function refused(entry, errors) {
    if (state.entry !== entry) return;
    if (!errors.some((e) => e.extensions && e.extensions.code === 'FORBIDDEN')) return status(describe(errors), true);
    if (entry.joined) return removed(entry);
    const name = state.rooms.has(entry.room) ? state.rooms.get(entry.room).name : 'this room';
    leaveRoom();
    status(`You are not a member of ${name} (FORBIDDEN)`, true);
    $('chat-status').title = describe(errors);
  }

  function removed(entry) {
    const name = roomName(entry.room);
    leaveRoom();
    status(`You were removed from ${name} (FORBIDDEN): its messages, typing and presence are no longer yours`, true);
  }

  async function enterRoom(room) {
    leaveRoom();
    const entry = { room, stops: [], joined: false };
    state.entry = entry;
    state.room = room;
    showRooms();
    $('chat-room-title').hidden = false;
    if (ROOMS) {
      $('chat-room-link').href = `#room=${encodeURIComponent(room)}`;
      $('chat-room-link').title = 'A link to this room, for its members';
      $('chat-room-link').hidden = false;
    }
    $('chat-input').disabled = false;
    const { conn } = state;
    const channel = `room:${room}`;
    const fail = (errors) => refused(entry, errors);
    entry.stops.push(
      conn.subscribe(
        `subscription($c: String!, $m: JSON) { presence(channel: $c, meta: $m) {
           kind count members { sub connection connections meta } member { sub connection connections meta } } }`,
        { c: channel, m: { name: state.name, typing: false } },
        { next: (r) => onPresence(entry, r), error: fail, complete: ignore },
      ),
      conn.subscribe(
        'subscription($c: [String!]!) { channelEvents(channels: $c, types: ["typing"]) { type data sender { sub } } }',
        { c: [channel] },
        { next: onTyping, error: fail, complete: ignore },
      ),
    );
    // The last 50 messages, then every change after them: the query says which event-log
    // position it reflects (extensions.cursor), the subscription resumes there.
    const history = await conn.request(model.history, { r: room });
    if (state.entry !== entry) return;
    history.data.messages.reverse().forEach(showMessage);
    entry.stops.push(
      conn.subscribe(
        model.events,
        { r: room, after: (history.extensions && history.extensions.cursor) || null },
        {
          next: (r) => {
            const event = r.data && r.data.event;
            if (event) (gone(event) ? hideMessage(event.record.id) : showMessage(event.record));
          },
          error: fail,
          complete: ignore,
        },
      ),
    );
    if (ROOMS) await watchRoster(entry);
    if (state.entry === entry) status(`In ${roomName(room)} as ${state.name}`);
  }

  async function watchRoster(entry) {
    const { conn } = state;
    const members = await conn.request(
      'query($r: ID!) { memberships(where: {roomId: {eq: $r}}, limit: 1000) { id userId } }',
      { r: entry.room },
    );
    if (state.entry !== entry) return;
    members.data.memberships.forEach((m) => state.roster.set(m.id, m.userId));
    showRoster();
    entry.stops.push(
      conn.subscribe(
        `subscription($r: ID!, $after: String) {
           membershipEvents(where: {roomId: {eq: $r}}, after: $after) { operation match record { id userId } } }`,
        { r: entry.room, after: (members.extensions && members.extensions.cursor) || null },
        {
          next: (r) => {
            const event = r.data && r.data.membershipEvents;
            if (!event || state.entry !== entry) return;
            if (gone(event)) state.roster.delete(event.record.id);
            else state.roster.set(event.record.id, event.record.userId);
            showRoster();
          },
          error: ignore,
          complete: ignore,
        },
      ),
    );
  }

  async function join(event) {
    event.preventDefault();
    state.name = $('chat-name').value.trim() || 'guest';
    const token = config.auth ? $('chat-token').value.trim().replace(/^Bearer\s+/i, '') : '';
    if (ROOMS && !token) {
      return status('These rooms follow relation rules, which need tokens: serve with --jwt-secret', true);
    }
    state.sub = token ? subOf(token) : null;
    status('Connecting…');
    try {
      const payload = token ? { authorization: `Bearer ${token}` } : {};
      state.conn = await connect(wsUrl.href, payload, (why) => {
        leaveRoom();
        state.conn = null;
        state.rooms.clear();
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
      const first = await model.loadRooms(state.conn);
      if (first) await enterRoom(first);
      else status(`Signed in as ${state.sub || state.name}: create a room, or pick one you are a member of`);
    } catch (err) {
      status(err.message, true);
    }
  }

  async function send(event) {
    event.preventDefault();
    const input = $('chat-input');
    const body = input.value.trim();
    if (!body || !state.conn || !state.entry) return;
    input.value = '';
    clearTimeout(typingTimer);
    try {
      const [mutation, variables] = model.post(state.room, body);
      await state.conn.request(mutation, variables);
      await setTyping(false);
    } catch (err) {
      status(err.message, true);
    }
  }

  async function newRoom(event) {
    event.preventDefault();
    const name = $('chat-new-room').value.trim();
    // A demo room's name is its channel's segment; a room with members is named freely.
    const valid = ROOMS ? name.length > 0 && name.length <= 80 : /^[A-Za-z0-9_.-]{1,40}$/.test(name);
    if (!valid) return status(ROOMS ? 'A room name is 1 to 80 characters' : 'A room name is 1 to 40 letters, digits, _ . -', true);
    $('chat-new-room').value = '';
    try {
      const room = await model.createRoom(state.conn, name);
      await enterRoom(room.id);
    } catch (err) {
      status(err.message, true);
    }
  }

  async function addMember(event) {
    event.preventDefault();
    const userId = $('chat-add-member').value.trim();
    if (!userId || !state.entry) return;
    if ([...state.roster.values()].includes(userId)) return status(`${userId} is a member already`, true);
    $('chat-add-member').value = '';
    try {
      await state.conn.request('mutation($i: CreateMembershipInput!) { createMembership(input: $i) { id } }', {
        i: { roomId: state.entry.room, userId },
      });
    } catch (err) {
      status(err.message, true);
    }
  }

  $('chat-token-row').hidden = !config.auth;
  $('chat-input').disabled = true; // until a room is open
  $('chat-name').value = `guest-${Math.random().toString(36).slice(2, 6)}`;
  $('chat-join').addEventListener('submit', join);
  $('chat-send').addEventListener('submit', send);
  $('chat-room-form').addEventListener('submit', newRoom);
  $('chat-add-form').addEventListener('submit', addMember);
  $('chat-input').addEventListener('input', () => {
    clearTimeout(typingTimer);
    if ($('chat-input').value) {
      setTyping(true);
      typingTimer = setTimeout(() => setTyping(false), 3000);
    } else setTyping(false);
  });
  window.__tidingsChat = { state, config };
})();
