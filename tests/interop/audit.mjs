// The GraphQL over HTTP audit suite (graphql-http's serverAudits) against a running
// tidings: one JSON line per audit, {"id", "name", "status", "reason"}, then DONE.
// Usage: node audit.mjs --url http://127.0.0.1:PORT   (loopback only)
// Exit code 0 once every audit ran, whatever their outcome (the caller judges); 2 on a
// bad argument or an audit that threw instead of reporting.
import { serverAudits } from 'graphql-http';

let url;
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (argv[i] === '--url') url = argv[i + 1];
}
if (!url) {
  process.stderr.write('missing --url\n');
  process.exit(2);
}
const base = new URL(url);
if (!['127.0.0.1', 'localhost', '[::1]'].includes(base.hostname)) {
  process.stderr.write(`refusing non-loopback url ${url}\n`);
  process.exit(2);
}
const endpoint = `${url.replace(/\/+$/, '').replace(/\/graphql$/, '')}/graphql`;

// One audit at a time: the results come out in the suite's order, and the server sees
// no more than one request at once.
for (const { id, name, fn } of serverAudits({ url: endpoint })) {
  let result;
  try {
    result = await fn();
  } catch (err) {
    process.stderr.write(`audit ${id} threw: ${err}\n`);
    process.exit(2);
  }
  const reason = result.status === 'ok' ? null : result.reason;
  process.stdout.write(`${JSON.stringify({ id, name, status: result.status, reason })}\n`);
}
process.stdout.write('DONE\n');
