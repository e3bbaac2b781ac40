// permessage-deflate through the real gateway (default `permessage_deflate =
// "inspect"`), with real peers at their compressing defaults: a Node `ws`
// backend with perMessageDeflate, a Node `ws` client with perMessageDeflate,
// and headless Chromium (which offers permessage-deflate on its own).
// Every promise must hold on compressed messages: app_ping answered and not
// forwarded, max_message_bytes on the inflated size (1009), invalid UTF-8
// inside compressed text (1007), and ordinary traffic echoed in order.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket, WebSocketServer } from 'ws';
import { Gateway, openPage, startBrowser, startStatic, until, waitFor } from './harness.js';

const T = { timeout: 60000 };
const PING = '{"type":"ping"}';
const PONG = '{"type":"pong"}';
const LIMIT = 65536;

let web, browser, gateway, wss;
/** What the backend saw, per connection URL: messages, close, the agreed extensions. */
const seen = new Map();

before(async () => {
  web = await startStatic();
  // threshold 0: every message is compressed, however small.
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: { threshold: 0 } });
  await new Promise((r) => wss.on('listening', r));
  wss.on('connection', (ws, req) => {
    const rec = { msgs: [], close: null, extensions: req.headers['sec-websocket-extensions'] ?? '', agreed: ws.extensions };
    seen.set(req.url, rec);
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? null : data.toString();
      rec.msgs.push(text ?? data);
      // "bad-utf8" asks the backend for a compressed text message that is
      // not UTF-8 (ws does not check what it sends).
      if (text === 'bad-utf8') return ws.send(Buffer.from([0x68, 0x69, 0xff, 0xfe]), { binary: false });
      ws.send(data, { binary: isBinary });
    });
    ws.on('close', (code) => (rec.close = code));
  });
  gateway = await new Gateway(wss.address().port, 0, `[limits]\nmax_message_bytes = ${LIMIT}\n`).start();
  browser = await startBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  wss?.close();
  web?.server.close();
});

/** A Node ws client with compression on (its default offer). */
function nodeClient(path) {
  const ws = new WebSocket(gateway.url + path, { perMessageDeflate: { threshold: 0 } });
  const got = [];
  const upgrade = new Promise((r) => ws.once('upgrade', (res) => r(res.headers['sec-websocket-extensions'] ?? '')));
  const closed = new Promise((r) => ws.on('close', (code) => r(code)));
  ws.on('message', (d, isBinary) => got.push(isBinary ? d : d.toString()));
  const open = new Promise((res, rej) => {
    ws.once('open', res);
    ws.once('error', rej);
  });
  return { ws, got, closed, open, upgrade };
}

test('Node ws: compression is negotiated through the gateway, without context takeover on the inspected sides', T, async () => {
  const c = nodeClient('/n-negotiate');
  await c.open;
  await waitFor(() => seen.has('/n-negotiate'), 'backend connection');
  const rec = seen.get('/n-negotiate');
  assert.match(rec.extensions, /permessage-deflate/);
  assert.match(rec.extensions, /server_no_context_takeover/, 'the gateway asks the backend to drop its context');
  assert.equal(c.ws.extensions, 'permessage-deflate');
  assert.match(await c.upgrade, /client_no_context_takeover/, 'the client is told to drop its context');
  c.ws.close();
});

test('Node ws: app_ping compressed is answered and not forwarded', T, async () => {
  const c = nodeClient('/n-ping');
  await c.open;
  c.ws.send(PING);
  c.ws.send('after');
  await waitFor(() => c.got.length >= 2, 'pong and echo');
  assert.deepEqual(c.got, [PONG, 'after']);
  assert.deepEqual(seen.get('/n-ping').msgs, ['after']);
  c.ws.close();
});

test('Node ws: a 1 MiB compressible message closes 1009; invalid UTF-8 inside compressed text closes 1007', T, async () => {
  const c = nodeClient('/n-big');
  await c.open;
  c.ws.send('a'.repeat(1 << 20));
  assert.equal(await c.closed, 1009);
  await waitFor(() => seen.get('/n-big')?.close !== null, 'backend closed');
  assert.deepEqual(seen.get('/n-big').msgs, [], 'the backend never got it');

  const u = nodeClient('/n-utf8');
  await u.open;
  u.ws.send(Buffer.from([0x68, 0x69, 0xff]), { binary: false });
  assert.equal(await u.closed, 1007);

  // The backend's compressed invalid text: the backend is closed 1007.
  const b = nodeClient('/n-utf8-backend');
  await b.open;
  b.ws.send('bad-utf8');
  assert.equal(await b.closed, 1014, 'the client learns its backend failed');
  await waitFor(() => seen.get('/n-utf8-backend')?.close !== null, 'backend closed');
  assert.equal(seen.get('/n-utf8-backend').close, 1007);
});

test('Node ws: 10,000 compressed messages echo in order', T, async () => {
  const c = nodeClient('/n-many');
  await c.open;
  for (let i = 0; i < 10000; i++) c.ws.send(JSON.stringify({ seq: i, body: 'lorem ipsum dolor sit amet '.repeat(4) }));
  await waitFor(() => c.got.length >= 10000, '10,000 echoes', 30000);
  c.got.forEach((m, i) => assert.equal(JSON.parse(m).seq, i));
  c.ws.close();
});

/** Opens a page whose plain browser WebSocket goes through the gateway. */
async function browserSocket(path) {
  const page = await openPage(browser.context, web.origin);
  await page.evaluate((url) => {
    window.t = { got: [], close: null };
    const ws = new WebSocket(url);
    window.t.ws = ws;
    ws.onmessage = (e) => window.t.got.push(e.data);
    ws.onclose = (e) => (window.t.close = e.code);
    return new Promise((res, rej) => {
      ws.onopen = res;
      ws.onerror = () => rej(new Error('websocket error'));
    });
  }, gateway.url + path);
  return page;
}

test('Chromium: deflate negotiated, app_ping answered and not forwarded, 10,000 messages in order', T, async () => {
  const page = await browserSocket('/c-many');
  const ext = await page.evaluate(() => window.t.ws.extensions);
  assert.match(ext, /permessage-deflate/, 'Chromium offered it and the backend agreed');
  await waitFor(() => seen.has('/c-many'), 'backend connection');
  assert.match(seen.get('/c-many').agreed, /permessage-deflate/);
  await page.evaluate((ping) => window.t.ws.send(ping), PING);
  await until(page, () => window.t.got.length >= 1, null, 'pong');
  assert.deepEqual(await page.evaluate(() => window.t.got), [PONG]);
  await page.evaluate(() => {
    window.t.got = [];
    for (let i = 0; i < 10000; i++) window.t.ws.send(JSON.stringify({ seq: i, body: 'lorem ipsum dolor sit amet '.repeat(4) }));
  });
  await until(page, () => window.t.got.length >= 10000, null, '10,000 echoes', 40000);
  const inOrder = await page.evaluate(() => window.t.got.every((m, i) => JSON.parse(m).seq === i));
  assert.ok(inOrder, 'echoed in order');
  const msgs = seen.get('/c-many').msgs;
  assert.equal(msgs.length, 10000);
  assert.ok(!msgs.includes(PING), 'app_ping never reached the backend');
  await page.close();
});

test('Chromium: a 1 MiB compressible message closes 1009', T, async () => {
  const page = await browserSocket('/c-big');
  await page.evaluate(() => window.t.ws.send('a'.repeat(1 << 20)));
  assert.equal(await until(page, () => window.t.close, null, 'close'), 1009);
  await waitFor(() => seen.get('/c-big')?.close !== null, 'backend closed');
  assert.deepEqual(seen.get('/c-big').msgs, []);
  await page.close();
});

test('Chromium: invalid UTF-8 inside the backend\'s compressed text closes it 1007', T, async () => {
  const page = await browserSocket('/c-utf8');
  await page.evaluate(() => window.t.ws.send('bad-utf8'));
  // Chromium never sees the bad text: the gateway closes the backend 1007
  // and tells the browser its backend failed.
  assert.equal(await until(page, () => window.t.close, null, 'close'), 1014);
  assert.deepEqual(await page.evaluate(() => window.t.got), []);
  await waitFor(() => seen.get('/c-utf8')?.close !== null, 'backend closed');
  assert.equal(seen.get('/c-utf8').close, 1007);
  await page.close();
});
