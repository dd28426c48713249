// tidings' playground: GraphiQL with the explorer plugin, opened on examples built by
// the server from its collections (the JSON in #tidings-config), with a switch between
// WebSocket and SSE for subscriptions. Everything it loads comes from the server.
// Headers are one value for every tab, kept in localStorage (GraphiQL's
// shouldPersistHeaders, per origin); a schema fetch the server refuses shows nothing.
import React, { useEffect, useRef, useState } from 'react';
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

// GraphiQL's schema fetch goes by this operation name, so the fetcher can tell it from a run.
const SCHEMA_QUERY = 'TidingsPlaygroundSchema';
const fetcher = quietSchemaFetch(
  createFetcher({ httpUrl: httpUrl.href, wsUrl: wsUrl.href, transport: () => transport }),
);

// With auth on, the schema fetch has no token until one is in Headers, and GraphiQL puts
// whatever refused it in the result pane before anything has run. Answered "" instead,
// GraphiQL shows nothing; the bar says what docs need. (GraphiQL retries a result without
// `data` without subscriptionType, for servers that have none: tidings has, so that one
// is not sent.)
function quietSchemaFetch(fetch) {
  return (params, opts) => {
    if (params.operationName !== SCHEMA_QUERY) return fetch(params, opts);
    if (!params.query.includes('subscriptionType')) return Promise.resolve('');
    return Promise.resolve(fetch(params, opts)).then(
      (result) => (result?.data?.__schema ? result : ''),
      () => '',
    );
  };
}

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
        HTTP, in <code>connection_init</code> and as the SSE header, from every tab, and kept in this browser.{' '}
        {config.introspection === 'off' ? (
          <>
            Docs and completion need introspection, off with auth unless <code>--introspection authenticated</code>{' '}
            or <code>--introspection on</code>.
          </>
        ) : config.introspection === 'authenticated' ? (
          'Docs and completion load once the token is in Headers.'
        ) : null}
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

// With auth on, GraphiQL's first introspection has no token (it runs before the Headers
// editor exists, so even a kept token is not sent) and fails; GraphiQL only retries on its
// re-fetch button. Retry when the editor appears holding headers and whenever it settles
// on valid JSON while there is no schema, so docs and completion appear with a token.
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
      // Half-typed JSON would put GraphiQL's "headers are invalid" in the result pane.
      timer = setTimeout(() => isJSON(headerEditor.getValue()) && introspect(), 300);
    };
    if (headerEditor.getValue().trim()) retry();
    headerEditor.on('change', retry);
    return () => {
      clearTimeout(timer);
      headerEditor.off('change', retry);
    };
  }, [headerEditor, schema, introspect]);
  return null;
}

function isJSON(text) {
  try {
    JSON.parse(text || '{}');
    return true;
  } catch {
    return false;
  }
}

// GraphiQL keeps headers per tab: a token pasted in one tab would be missing from the
// next. Whatever the user last typed in Headers is put in each tab they switch to (or
// open); GraphiQL's own changes (a tab's stored value) are not typing, so they do not count.
function SharedHeaders() {
  const { headerEditor, tabs, activeTabIndex } = useEditorContext();
  const shared = useRef(null);
  const activeTab = tabs[activeTabIndex]?.id;
  useEffect(() => {
    if (!headerEditor) return undefined;
    shared.current ??= headerEditor.getValue(); // the kept headers GraphiQL opened with
    const keep = (editor, change) => {
      if (change?.origin !== 'setValue') shared.current = editor.getValue();
    };
    headerEditor.on('change', keep);
    return () => headerEditor.off('change', keep);
  }, [headerEditor]);
  useEffect(() => {
    if (headerEditor && shared.current !== null && headerEditor.getValue() !== shared.current) {
      headerEditor.setValue(shared.current);
    }
  }, [headerEditor, activeTab]);
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
          shouldPersistHeaders
          plugins={[explorer]}
          defaultEditorToolsVisibility={config.auth ? 'headers' : false}
          introspectionQueryName={SCHEMA_QUERY}
          schema={config.introspection === 'off' ? null : undefined}
        >
          <GraphiQL.Logo>tidings</GraphiQL.Logo>
          <GraphiQL.Footer>
            <SharedHeaders />
            {config.introspection === 'off' ? null : <IntrospectAfterHeaders />}
          </GraphiQL.Footer>
        </GraphiQL>
      </main>
    </div>
  );
}

// A small hook for tests and for scripting the page; runs go through the real fetcher.
window.__tidingsPlayground = { setTransport, transport: () => transport, hasSchema: () => hasSchema, config };

createRoot(document.getElementById('tidings-playground')).render(<Playground />);
