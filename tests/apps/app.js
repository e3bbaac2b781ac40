// One backend instance of a typical realtime app, all on one port, each
// framework at its defaults: an HTML page, a JSON API, a plain WebSocket
// (/ws), a Socket.IO 4 server (/socket.io/), a SockJS echo (/sockjs), and a
// server-sent-events stream (/sse). Every answer names the instance, so the
// tests see which backend served what. Prints JSON lines on stdout.
// Usage: node app.js NAME
import { createServer } from 'node:http';
import { Server } from 'socket.io';
import { WebSocketServer } from 'ws';
import sockjs from 'sockjs';

const name = process.argv[2] ?? 'app';
const log = (o) => process.stdout.write(JSON.stringify({ backend: name, ...o }) + '\n');

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>app</title></head>
<body data-backend="${name}">
<script src="/socket.io/socket.io.js"></script>
<script>
  window.result = { page: document.body.dataset.backend };
  fetch('/api/who').then((r) => r.json()).then((j) => {
    window.result.api = j.backend;
    const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/ws');
    ws.onmessage = (e) => { window.result.ws = e.data; ws.close(); };
    ws.onopen = () => ws.send('ping');
    ws.onerror = () => { window.result.wsError = true; };
  });
  const sio = io();
  sio.on('connect', () => {
    sio.emit('hello', (who) => { window.result.sio = who; });
  });
  sio.io.engine.on('upgrade', (t) => { window.result.sioTransport = t.name; });
</script>
</body></html>`;

// SSE streams wait for a release (GET /sse/release) before their last event,
// so a test can check the first event arrived while the response was open.
const waiting = new Set();

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
  } else if (url.pathname === '/api/who') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ backend: name, xff: req.headers['x-forwarded-for'] ?? null }));
  } else if (url.pathname === '/sse') {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write(`event: first\ndata: ${name}\n\n`);
    const release = () => {
      waiting.delete(release);
      res.end(`event: last\ndata: ${name}\n\n`);
    };
    waiting.add(release);
    req.on('close', () => waiting.delete(release));
  } else if (url.pathname === '/sse/release') {
    const n = waiting.size;
    for (const r of [...waiting]) r();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ released: n }));
  } else if (url.pathname === '/healthz') {
    res.writeHead(200).end('ok');
  } else if (!url.pathname.startsWith('/socket.io/') && !url.pathname.startsWith('/sockjs')) {
    res.writeHead(404).end();
  }
});

// Socket.IO at its defaults (path /socket.io/, polling then websocket).
const io = new Server(server);
io.on('connection', (socket) => {
  log({ ev: 'sio', id: socket.id, transport: socket.conn.transport.name });
  socket.conn.on('upgrade', (t) => log({ ev: 'sio-upgrade', id: socket.id, transport: t.name }));
  socket.on('hello', (ack) => ack(name));
  socket.on('shout', (text) => io.emit('broadcast', `${name}:${text}`));
});

// SockJS echo at its defaults.
const echo = sockjs.createServer({ log: () => {} });
echo.on('connection', (conn) => {
  log({ ev: 'sockjs', protocol: conn.protocol });
  conn.on('data', (m) => conn.write(`${name}:${m}`));
});
echo.installHandlers(server, { prefix: '/sockjs' });

// A plain WebSocket endpoint, upgrades on /ws only (Socket.IO and SockJS
// handle their own paths).
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url, 'http://x').pathname !== '/ws') return;
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (m) => ws.send(`${name}:${m}`));
  });
});

server.listen(0, '127.0.0.1', () => log({ ev: 'listening', port: server.address().port }));
