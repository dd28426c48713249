// tidings' playground: GraphiQL with the explorer plugin, opened on examples built by
// the server from its collections (the JSON in #tidings-config), with a switch between
// WebSocket and SSE for subscriptions. Everything it loads comes from the server.
import React, { useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { explorerPlugin } from '@graphiql/plugin-explorer';
import { useEditorContext, useSchemaStore } from '@graphiql/react';
import 'graphiql/style.css';
import '@graphiql/plugin-explorer/style.css';
import './playground.css';
import { createFetcher } from './fetcher.js';

const config = JSON.parse(document.getElementById('tidings-config').textContent);
const httpUrl = new URL(config.endpoint, window.location.href);
const wsUrl = new URL(httpUrl);
wsUrl.protocol = httpUrl.protocol === 'https:' ? 'wss:' : 'ws:';

const TRANSPORT_KEY = 'tidings:transport';
let transport = window.localStorage.getItem(TRANSPORT_KEY) === 'sse' ? 'sse' : 'ws';
const listeners = new Set();

function setTransport(value) {
  if (value !== 'ws' && value !== 'sse') throw new Error(`transport must be 'ws' or 'sse', got ${value}`);
  transport = value;
  window.localStorage.setItem(TRANSPORT_KEY, value);
  for (const listener of listeners) listener(value);
}

const fetcher = createFetcher({ httpUrl: httpUrl.href, wsUrl: wsUrl.href, transport: () => transport });

// GraphiQL keeps tabs in localStorage; a namespace of our own (per set of examples)
// keeps tabs left by another GraphiQL on the same origin, or by other collections, out.
const prefix = `tidings:${config.storageKey}:`;
const storage = {
  getItem: (key) => window.localStorage.getItem(prefix + key),
  setItem: (key, value) => window.localStorage.setItem(prefix + key, value),
  removeItem: (key) => window.localStorage.removeItem(prefix + key),
  get length() {
    return Object.keys(window.localStorage).filter((k) => k.startsWith(prefix)).length;
  },
  clear() {
    for (const key of Object.keys(window.localStorage)) if (key.startsWith(prefix)) window.localStorage.removeItem(key);
  },
};

const explorer = explorerPlugin();

function TransportSwitch() {
  const [value, setValue] = useState(transport);
  useEffect(() => {
    listeners.add(setValue);
    return () => listeners.delete(setValue);
  }, []);
  const option = (name, label) => (
    <button
      type="button"
      id={`tidings-transport-${name}`}
      aria-pressed={value === name}
      className={value === name ? 'active' : ''}
      onClick={() => setTransport(name)}
    >
      {label}
    </button>
  );
  return (
    <span className="tidings-switch" role="group" aria-label="Subscriptions over">
      <span>Subscriptions over</span>
      {option('ws', 'WebSocket')}
      {option('sse', 'SSE')}
    </span>
  );
}

function AuthHint() {
  const headers = <code>{'{"Authorization": "Bearer <token>"}'}</code>;
  if (config.auth) {
    return (
      <span className="tidings-hint" id="tidings-auth-hint">
        Auth is on: put {headers} in Headers (mint one with <code>tidings token --sub alice</code>); it is sent on
        HTTP, in <code>connection_init</code> and as the SSE header.
        {config.introspection ? null : (
          <>
            {' '}
            Docs and completion need introspection, off with auth unless <code>--introspection on</code>.
          </>
        )}
      </span>
    );
  }
  return (
    <span className="tidings-hint" id="tidings-auth-hint">
      Demo mode: no JWT secret, the API is open. To try auth, serve with <code>TIDINGS_JWT_SECRET</code> set, run{' '}
      <code>tidings token --sub alice</code> and put {headers} in Headers.
    </span>
  );
}

// With auth on, GraphiQL's first introspection has no token and fails; GraphiQL only
// retries on its re-fetch button. Retry once the Headers editor settles while there is
// no schema, so docs and completion appear when the user pastes a token.
let hasSchema = false;
function IntrospectAfterHeaders() {
  const { headerEditor } = useEditorContext();
  const introspect = useSchemaStore((s) => s.introspect);
  const schema = useSchemaStore((s) => s.schema);
  hasSchema = Boolean(schema);
  useEffect(() => {
    if (!headerEditor || schema) return undefined;
    let timer;
    const retry = () => {
      clearTimeout(timer);
      timer = setTimeout(introspect, 300);
    };
    headerEditor.on('change', retry);
    return () => {
      clearTimeout(timer);
      headerEditor.off('change', retry);
    };
  }, [headerEditor, schema, introspect]);
  return null;
}

function Playground() {
  return (
    <div className="tidings-playground">
      <header className="tidings-bar">
        <strong>tidings</strong>
        <TransportSwitch />
        <AuthHint />
      </header>
      <main className="tidings-graphiql">
        <GraphiQL
          fetcher={fetcher}
          defaultTabs={config.tabs.length ? config.tabs : undefined}
          storage={storage}
          plugins={[explorer]}
          defaultEditorToolsVisibility={config.auth ? 'headers' : false}
        >
          <GraphiQL.Logo>tidings</GraphiQL.Logo>
          {config.introspection ? (
            <GraphiQL.Footer>
              <IntrospectAfterHeaders />
            </GraphiQL.Footer>
          ) : null}
        </GraphiQL>
      </main>
    </div>
  );
}

// A small hook for tests and for scripting the page; runs go through the real fetcher.
window.__tidingsPlayground = { setTransport, transport: () => transport, hasSchema: () => hasSchema, config };

createRoot(document.getElementById('tidings-playground')).render(<Playground />);
