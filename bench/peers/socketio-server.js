#!/usr/bin/env node
// Peer for bench/compare: a Socket.IO 4 server with the events equivalent to
// wsgate's subscribe/publish (driven by `wsgate-bench --protocol socketio`):
//
//   emit("subscribe",   {topic: "t"} | {topics: [...]}, ack)  joins the rooms;   ack({subscribed: [...]})
//   emit("unsubscribe", {topic: "t"} | {topics: [...]}, ack)  leaves the rooms;  ack({unsubscribed: [...]})
//   emit("publish",     {topic: "t", data: …}, ack)           io.to(t).emit("message", {topic, data}); ack({})
//   bad arguments:                                             ack({error: "…"})
//
// WebSocket transport only (no HTTP long-polling), no permessage-deflate,
// default ping interval (25 s) and buffers. With --redis-url it uses
// @socket.io/redis-adapter, so that several processes form one cluster
// (publishes reach subscribers on every node through Redis pub/sub).
//
// Usage: node socketio-server.js [--host 127.0.0.1] [--port 18320] [--redis-url redis://127.0.0.1:6399]

'use strict';

const http = require('http');
const { Server } = require('socket.io');

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '18320'));
const redisUrl = arg('redis-url', null);

function topicList(p) {
  if (!p || typeof p !== 'object') return null;
  const list = typeof p.topic === 'string' ? [p.topic] : p.topics;
  if (!Array.isArray(list) || list.length === 0 || !list.every((t) => typeof t === 'string' && t.length > 0)) {
    return null;
  }
  return list;
}

function ackOf(args) {
  const last = args[args.length - 1];
  return typeof last === 'function' ? last : () => {};
}

async function main() {
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    serveClient: false,
    transports: ['websocket'],
    perMessageDeflate: false,
    maxHttpBufferSize: 65536,
  });

  if (redisUrl) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pubClient = createClient({ url: redisUrl });
    const subClient = pubClient.duplicate();
    for (const c of [pubClient, subClient]) c.on('error', (e) => console.error(`socketio-server: redis: ${e.message}`));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
  }

  io.on('connection', (socket) => {
    socket.on('subscribe', (...args) => {
      const ack = ackOf(args);
      const list = topicList(args[0]);
      if (!list) return ack({ error: 'give topic or topics' });
      socket.join(list);
      ack({ subscribed: list });
    });
    socket.on('unsubscribe', (...args) => {
      const ack = ackOf(args);
      const list = topicList(args[0]);
      if (!list) return ack({ error: 'give topic or topics' });
      const removed = list.filter((t) => socket.rooms.has(t));
      for (const t of removed) socket.leave(t);
      ack({ unsubscribed: removed });
    });
    socket.on('publish', (...args) => {
      const ack = ackOf(args);
      const p = args[0];
      if (!p || typeof p !== 'object' || typeof p.topic !== 'string' || !('data' in p)) {
        return ack({ error: 'give topic and data' });
      }
      io.to(p.topic).emit('message', { topic: p.topic, data: p.data });
      ack({});
    });
  });

  httpServer.on('error', (e) => {
    console.error(`socketio-server: ${e.message}`);
    process.exit(1);
  });
  httpServer.listen({ host, port, backlog: 4096 }, () =>
    console.error(
      `socketio-server: listening on ws://${host}:${port}/socket.io/ (pid ${process.pid}${redisUrl ? `, redis ${redisUrl}` : ''})`,
    ),
  );
}

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
main().catch((e) => {
  console.error(`socketio-server: ${e.stack || e}`);
  process.exit(1);
});
