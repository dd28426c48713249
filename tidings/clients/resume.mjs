// Resume a tidings subscription across reconnects with no gap and no duplicate.
//
// Plain JavaScript, no dependencies, no build step: copy this file next to your code (it
// ships in the Python package as tidings/clients/resume.mjs) and import it.
//
//   const client = createClient({ url, ...keepRetrying })   // graphql-ws or graphql-sse
//   subscribeWithResume(client, { query, variables }, sink, { reload }) -> unsubscribe
//
// client   a graphql-ws client or a graphql-sse client (distinct or single connection
//          mode): anything with subscribe(payload, sink) that returns an unsubscribe,
//          created with keepRetrying's options (below).
// query    a subscription declaring `$after: String`, passed to the field as
//          `after: $after`, and selecting `cursor` on the event.
// sink     { next(result), error(err), complete() }, as for client.subscribe.
// reload   async () => cursor: (re)load your data with a query and return its
//          `extensions.cursor`. Called before subscribing when `variables.after` is not
//          given, and again whenever the server refuses the cursor (CURSOR_INVALID: another
//          database; CURSOR_EXPIRED: older than retention); the subscription then carries on
//          from the cursor it returns.
//
// How: both clients retry on their own after a dropped connection or a server restart
// (graphql-ws after a 1012 close, graphql-sse after its stream ended), and each retry
// re-sends, re-serialized, the very payload object it was given. So the helper hands the
// client one payload object per subscription and writes each event's cursor into its
// `variables` as the event arrives: whichever retry comes next asks for exactly what
// followed the last event delivered. (Neither client sends SSE's Last-Event-ID.)
// The client must keep retrying while the server is down; when it gives up, sink.error
// gets its last error and the subscription is over.

// Options for createClient (graphql-ws or graphql-sse) that keep the client retrying
// through a restart however long the server is down, on the client's own randomised
// backoff: 2^n s plus 0.3-3 s between attempts, reset once connected. (The waits double
// without a cap: pass retryWait (graphql-ws) or retry (graphql-sse) to cap them.)
// - retryAttempts: the default, 5, gives up within a minute.
// - shouldRetry (graphql-ws; graphql-sse ignores it): by default graphql-ws retries only
//   after a close. A retry that finds the server still down fails with an error event
//   (connection refused: an error, then close 1006, in browsers and node alike), and the
//   client would end every subscription there: events written meanwhile never arrive.
export const keepRetrying = Object.freeze({ retryAttempts: Infinity, shouldRetry: () => true });

const REFUSED = new Set(['CURSOR_INVALID', 'CURSOR_EXPIRED']);

function refused(errors) {
  return Array.isArray(errors) && errors.some((e) => REFUSED.has(e?.extensions?.code));
}

export function subscribeWithResume(client, request, sink, { reload, variable = 'after' } = {}) {
  let stopped = false;
  let current = null; // { payload, dispose, replaced }

  function subscribe(after) {
    const payload = { ...request, variables: { ...request.variables, [variable]: after ?? null } };
    const sub = { payload, dispose: () => {}, replaced: false };
    const live = () => !stopped && !sub.replaced;
    current = sub;
    sub.dispose = client.subscribe(payload, {
      next(result) {
        if (!live()) return;
        if (refused(result?.errors)) return restart(sub, result.errors); // graphql-sse
        const event = result?.data ? Object.values(result.data)[0] : undefined;
        if (event && typeof event.cursor === 'string') payload.variables[variable] = event.cursor;
        else if (event) return fail(new Error(`select \`cursor\` in the subscription to resume it`));
        sink.next(result);
      },
      error(err) {
        if (!live()) return;
        if (refused(err)) return restart(sub, err); // graphql-ws: the error message's GraphQL errors
        stopped = true;
        sink.error(err);
      },
      complete() {
        if (live()) {
          stopped = true;
          sink.complete();
        }
      },
    });
  }

  function fail(err) {
    stopped = true;
    current?.dispose();
    sink.error(err);
  }

  function restart(sub, errors) {
    sub.replaced = true;
    sub.dispose();
    if (!reload) {
      stopped = true;
      sink.error(errors);
      return;
    }
    begin();
  }

  async function begin() {
    let cursor;
    try {
      cursor = await reload();
    } catch (err) {
      if (!stopped) fail(err);
      return;
    }
    if (!stopped) subscribe(cursor);
  }

  if (request.variables?.[variable] != null || !reload) subscribe(request.variables?.[variable]);
  else begin();

  return () => {
    stopped = true;
    current?.dispose();
  };
}
