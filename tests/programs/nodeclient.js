'use strict';
// nodeclient: a Node.js test client for mirrortrace.
//
// Node has two resolvers: dns.lookup goes through getaddrinfo on libuv's thread pool,
// dns.resolve* uses c-ares, which reads /etc/resolv.conf itself and sends its own UDP
// queries from the main thread. Both must end up at the pod's nameserver.
//
//   node nodeclient.js get URL        http.get, body on stdout
//   node nodeclient.js resolve NAME   dns.resolve4 (c-ares): one address per line
//   node nodeclient.js resolve6 NAME  dns.resolve6 (c-ares)
//   node nodeclient.js lookup NAME    dns.lookup all (getaddrinfo): one address per line
//
// Failures print "error: CODE message" on stderr and exit 1.

const dns = require('dns');
const http = require('http');

function fail(err) {
  // With autoSelectFamily a failed connect is an AggregateError with an empty message.
  const detail = err.message || (err.errors || []).map((e) => e.message).join('; ');
  process.stderr.write(`error: ${err.code || ''} ${detail}\n`);
  process.exit(1);
}

function printAll(err, addrs) {
  if (err) fail(err);
  for (const a of addrs) process.stdout.write(`${typeof a === 'string' ? a : a.address}\n`);
}

const [cmd, arg] = process.argv.slice(2);
if (!cmd || !arg) {
  process.stderr.write('usage: nodeclient.js get URL | resolve NAME | resolve6 NAME | lookup NAME\n');
  process.exit(2);
}

switch (cmd) {
  case 'get': {
    const req = http.get(arg, { timeout: 60000 }, (res) => {
      res.on('data', (chunk) => process.stdout.write(chunk));
      res.on('end', () => {
        if (res.statusCode >= 400) fail(new Error(`HTTP status ${res.statusCode}`));
      });
      res.on('error', fail);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', fail);
    break;
  }
  case 'resolve':
    dns.resolve4(arg, printAll);
    break;
  case 'resolve6':
    dns.resolve6(arg, printAll);
    break;
  case 'lookup':
    dns.lookup(arg, { all: true }, printAll);
    break;
  default:
    process.stderr.write(`unknown command ${cmd}\n`);
    process.exit(2);
}
