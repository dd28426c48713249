// The playground's fetcher: queries and mutations as HTTP POST JSON, subscriptions over
// graphql-transport-ws (graphql-ws) or graphql-sse. Whatever the Headers editor holds is
// sent on HTTP requests, as the connection_init payload and as the SSE request headers,
// and a refused connection (close 4401/4403, HTTP 401/403) ends the run with an error in
// the result pane instead of a silent retry.
import { getOperationAST, parse } from 'graphql';
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';

// GraphiQL hands over the operation name and document it parsed last, up to 100 ms
// after an edit or a tab change (a debounce): a run right after switching tabs would
// send the previous tab's name. The query text is current, so parse it here.
function resolveOperation(params) {
  let doc;
  try {
    doc = parse(params.query);
  } catch {
    return { params, type: undefined }; // let the server report the syntax error
  }
  const ops = doc.definitions.filter((d) => d.kind === 'OperationDefinition');
  if (params.operationName && ops.length === 1 && ops[0].name?.value !== params.operationName) {
    params = { ...params, operationName: ops[0].name?.value ?? null };
  }
  return { params, type: getOperationAST(doc, params.operationName || undefined)?.operation };
}

async function postJSON(url, params, headers) {
  const response = await fetch(url, {
    method: 'POST',
    headers: {
      accept: 'application/graphql-response+json, application/json',
      'content-type': 'application/json',
      ...headers,
    },
    body: JSON.stringify(params),
  });
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`HTTP ${response.status} ${response.statusText}: ${text.slice(0, 500)}`);
  }
}

// GraphiQL formats an array given to a sink's error() as {"errors": [...]}.
function closeErrors(event) {
  const reason = event.reason ? `: ${event.reason}` : '';
  return [{ message: `WebSocket closed with ${event.code}${reason}`, extensions: { closeCode: event.code } }];
}

function wsErrors(err) {
  if (Array.isArray(err)) return err; // the server's `error` message: GraphQL errors
  if (err && typeof err.code === 'number' && 'reason' in err) return closeErrors(err);
  if (err instanceof Error) return [{ message: err.message }];
  return [{ message: 'WebSocket error: cannot reach the server' }];
}

async function sseErrors(err) {
  if (Array.isArray(err)) return err;
  const response = err?.response;
  if (response) {
    try {
      const body = await response.json();
      if (Array.isArray(body?.errors)) {
        return body.errors.map((e) => ({ ...e, extensions: { ...e.extensions, status: response.status } }));
      }
    } catch {
      // not JSON: fall through to the status line
    }
    return [{ message: `HTTP ${response.status} ${response.statusText}`, extensions: { status: response.status } }];
  }
  return [{ message: err instanceof Error ? err.message : String(err) }];
}

// One client per Headers value: the token is part of the connection, so new headers
// need a new connection. A page runs one operation at a time (GraphiQL's run button
// stops the running one), so the previous client is disposed.
function cachedBy(make) {
  let current = null;
  return (headers) => {
    const key = JSON.stringify(headers);
    if (current?.key !== key) {
      current?.client.dispose();
      current = { key, client: make(headers) };
    }
    return current.client;
  };
}

function observable(start) {
  return {
    subscribe(sink) {
      return { unsubscribe: start(sink) };
    },
  };
}

export function createFetcher({ httpUrl, wsUrl, transport }) {
  const wsClient = cachedBy((headers) =>
    createWsClient({
      url: wsUrl,
      connectionParams: headers,
      lazy: true,
      // graphql-ws retries a 4403 in silence by default: the run would spin forever.
      retryAttempts: 0,
    }),
  );
  const sseClient = cachedBy((headers) =>
    createSseClient({ url: httpUrl, headers, singleConnection: false, retryAttempts: 0 }),
  );

  return (graphQLParams, opts) => {
    const headers = opts?.headers ?? {};
    const { params, type } = resolveOperation(graphQLParams);
    if (type !== 'subscription') {
      return postJSON(httpUrl, params, headers);
    }
    if (transport() === 'sse') {
      return observable((sink) =>
        sseClient(headers).subscribe(params, {
          next: (value) => sink.next(value),
          error: (err) => {
            sseErrors(err).then((errors) => sink.error(errors));
          },
          complete: () => sink.complete(),
        }),
      );
    }
    return observable((sink) =>
      wsClient(headers).subscribe(params, {
        next: (value) => sink.next(value),
        error: (err) => sink.error(wsErrors(err)),
        complete: () => sink.complete(),
      }),
    );
  };
}
