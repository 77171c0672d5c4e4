#!/usr/bin/env node
// Peer for bench/compare: the pub/sub server a Node developer would write
// with the `ws` package, speaking the JSON-RPC subset of wsgate that the load
// tool uses (docs/protocol.md), so `wsgate-bench --protocol wsgate` drives it
// unchanged:
//
//   {"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"t"}}      (or "topics":[…])
//   {"jsonrpc":"2.0","id":1,"result":{"subscribed":["t"]}}
//   {"jsonrpc":"2.0","id":2,"method":"unsubscribe","params":{"topics":["t"]}}
//   {"jsonrpc":"2.0","id":2,"result":{"unsubscribed":["t"]}}
//   {"jsonrpc":"2.0","id":3,"method":"publish","params":{"topic":"t","data":…}}
//   {"jsonrpc":"2.0","method":"message","params":{"topic":"t","data":…}}      (to each subscriber)
//   {"jsonrpc":"2.0","id":3,"result":{}}
//   {"jsonrpc":"2.0","id":4,"method":"ping"}  →  {"jsonrpc":"2.0","id":4,"result":"pong"}
//
// Idiomatic and minimal: JSON.parse per request, one JSON.stringify per
// publish (the encoded notification is shared by all subscribers), exact
// topics only (no wildcards), no permessage-deflate. Like wsgate's default
// slow-consumer policy, a subscriber with more than 4 MiB unsent is closed
// with 4000. No server pings (wsgate pings every 25 s; irrelevant to runs
// this short).
//
// Usage: node ws-server.js [--host 127.0.0.1] [--port 18310]

'use strict';

const { WebSocketServer } = require('ws');

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '18310'));
const MAX_BUFFERED = 4 * 1024 * 1024;

/** topic -> Set of sockets */
const topics = new Map();

function reply(ws, id, result) {
  ws.send(JSON.stringify({ jsonrpc: '2.0', id, result }));
}

function fail(ws, id, code, message) {
  ws.send(JSON.stringify({ jsonrpc: '2.0', id, error: { code, message } }));
}

function topicList(params) {
  if (!params || typeof params !== 'object') return null;
  const list = typeof params.topic === 'string' ? [params.topic] : params.topics;
  if (!Array.isArray(list) || list.length === 0 || !list.every((t) => typeof t === 'string' && t.length > 0)) {
    return null;
  }
  return list;
}

function subscribe(ws, list) {
  if (!ws.topics) ws.topics = new Set();
  for (const t of list) {
    ws.topics.add(t);
    let subs = topics.get(t);
    if (!subs) topics.set(t, (subs = new Set()));
    subs.add(ws);
  }
}

function unsubscribe(ws, list) {
  const removed = [];
  for (const t of list) {
    if (!ws.topics || !ws.topics.delete(t)) continue;
    removed.push(t);
    const subs = topics.get(t);
    if (subs) {
      subs.delete(ws);
      if (subs.size === 0) topics.delete(t);
    }
  }
  return removed;
}

function publish(topic, data) {
  const subs = topics.get(topic);
  if (!subs) return;
  const frame = Buffer.from(JSON.stringify({ jsonrpc: '2.0', method: 'message', params: { topic, data } }));
  for (const s of subs) {
    if (s.bufferedAmount > MAX_BUFFERED) {
      s.close(4000, 'slow consumer: outbound queue full');
      continue;
    }
    s.send(frame, { binary: false });
  }
}

function handle(ws, req) {
  if (!req || typeof req !== 'object' || Array.isArray(req) || req.jsonrpc !== '2.0' || typeof req.method !== 'string') {
    return fail(ws, req && req.id !== undefined ? req.id : null, -32600, 'invalid request');
  }
  const { id, method, params } = req;
  const answer = id !== undefined;
  switch (method) {
    case 'subscribe': {
      const list = topicList(params);
      if (!list) return answer && fail(ws, id, -32602, 'invalid params: give topic or topics');
      subscribe(ws, list);
      return answer && reply(ws, id, { subscribed: list });
    }
    case 'unsubscribe': {
      const list = topicList(params);
      if (!list) return answer && fail(ws, id, -32602, 'invalid params: give topic or topics');
      return answer && reply(ws, id, { unsubscribed: unsubscribe(ws, list) });
    }
    case 'publish': {
      if (!params || typeof params.topic !== 'string' || !('data' in params)) {
        return answer && fail(ws, id, -32602, 'invalid params: give topic and data');
      }
      publish(params.topic, params.data);
      return answer && reply(ws, id, {});
    }
    case 'ping':
      return answer && reply(ws, id, 'pong');
    default:
      return answer && fail(ws, id, -32601, `method not found: ${method.slice(0, 64)}`);
  }
}

const wss = new WebSocketServer({
  host,
  port,
  path: '/ws',
  backlog: 4096,
  maxPayload: 65536,
  perMessageDeflate: false,
  clientTracking: false,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) return fail(ws, null, -32600, 'invalid request: binary frames are not supported');
    let req;
    try {
      req = JSON.parse(data);
    } catch {
      return fail(ws, null, -32700, 'parse error');
    }
    handle(ws, req);
  });
  ws.on('close', () => {
    if (ws.topics) unsubscribe(ws, [...ws.topics]);
  });
  ws.on('error', () => {});
});

wss.on('listening', () => console.error(`ws-server: listening on ws://${host}:${port}/ws (pid ${process.pid})`));
wss.on('error', (e) => {
  console.error(`ws-server: ${e.message}`);
  process.exit(1);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
