// Real frameworks at their defaults, two backend instances (app.js) behind
// the real wsgate binary (or, with FRONT=nginx, behind nginx configured as
// Socket.IO's docs say: the same tests, the reference behaviour). Nothing in the apps or the clients' transport
// options is changed for the gateway; the only client option used is an
// http.Agent with a local address, to play 20 different machines.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { io } from 'socket.io-client';
import { App, FRONT, sleep, startBrowser, startFront, waitFor, within } from './harness.js';

const T = { timeout: 60000 };
let apps, gateway;

before(async () => {
  apps = await Promise.all([new App(process.execPath, ['app.js', 'one']).start(), new App(process.execPath, ['app.js', 'two']).start()]);
  gateway = await startFront(apps.map((a) => a.port));
});

after(async () => {
  await gateway?.stop();
  for (const a of apps ?? []) await a.stop();
});

/** A Socket.IO client at its defaults, from `localAddress`. */
function connect(localAddress) {
  const opts = localAddress ? { agent: new http.Agent({ localAddress }) } : {};
  return io(gateway.url, { ...opts, reconnection: false });
}

/** Connects, acks, and waits for the upgrade to WebSocket. */
async function session(localAddress) {
  const s = connect(localAddress);
  try {
    let polled;
    const upgraded = new Promise((r) =>
      s.io.on('open', () => {
        // The transport the engine opened with.
        polled = s.io.engine.transport.name;
        s.io.engine.on('upgrade', (t) => r(t.name));
      }),
    );
    await within(new Promise((r, j) => (s.on('connect', r), s.on('connect_error', j))), 15000, 'socket.io connect');
    const first = await within(s.emitWithAck('hello'), 10000, 'ack over the first transport');
    const transport = await within(upgraded, 15000, 'transport upgrade');
    const second = await within(s.emitWithAck('hello'), 10000, 'ack after the upgrade');
    return { s, polled, first, second, transport };
  } catch (e) {
    s.close();
    throw e;
  }
}

test('Socket.IO: connect, ack, broadcast, polling upgraded to websocket', T, async () => {
  const { s, polled, first, second, transport } = await session();
  try {
    assert.equal(polled, 'polling', 'socket.io-client starts with long polling');
    assert.equal(transport, 'websocket');
    assert.equal(s.io.engine.transport.name, 'websocket');
    assert.ok(['one', 'two'].includes(first));
    assert.equal(second, first, 'the upgrade reached the backend that served the polling');
    const got = new Promise((r) => s.once('broadcast', r));
    s.emit('shout', 'hi');
    assert.equal(await within(got, 10000, 'broadcast'), `${first}:hi`);
  } finally {
    s.close();
  }
});

test('Socket.IO: 20 clients from 20 addresses spread over both backends, each stuck to one', T, async () => {
  const sessions = [];
  try {
    for (let i = 0; i < 20; i++) sessions.push(await session(`127.0.0.${20 + i}`));
    for (const x of sessions) {
      assert.equal(x.polled, 'polling');
      assert.equal(x.transport, 'websocket');
      assert.equal(x.second, x.first, 'polling and websocket on one backend');
    }
    const by = sessions.reduce((m, x) => ((m[x.first] = (m[x.first] ?? 0) + 1), m), {});
    assert.ok(by.one > 0 && by.two > 0, `both backends used: ${JSON.stringify(by)}`);
    // The backends agree: each socket id was seen by exactly one of them.
    for (const x of sessions) {
      const seen = apps.filter((a) => a.events.some((e) => e.ev === 'sio-upgrade' && e.id === x.s.id));
      assert.equal(seen.length, 1, `socket ${x.s.id} upgraded on exactly one backend`);
      assert.equal(seen[0].args[1], x.first);
      const opened = seen[0].events.find((e) => e.ev === 'sio' && e.id === x.s.id);
      assert.equal(opened?.transport, 'polling', 'the backend saw the polling session');
    }
  } finally {
    for (const x of sessions) x.s.close();
  }
});

test('server-sent events stream through: the first event arrives before the response ends', T, async () => {
  const res = await within(new Promise((r, j) => http.get(`${gateway.url}/sse`, r).on('error', j)), 10000, 'SSE head');
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'], /text\/event-stream/);
  let text = '';
  let ended = false;
  res.setEncoding('utf8');
  res.on('data', (d) => (text += d));
  const end = new Promise((r) => res.on('end', () => ((ended = true), r())));
  await waitFor(() => text.includes('event: first'), 'the first event', 10000);
  assert.ok(!ended && !text.includes('event: last'), 'the stream is still open');
  // Same machine, so the same backend: release its stream.
  const rel = await within(fetch(`${gateway.url}/sse/release`).then((r) => r.json()), 10000, 'release');
  assert.equal(rel.released, 1);
  await within(end, 10000, 'the end of the stream');
  assert.match(text, /event: last/);
});

test('Chromium: page, JSON API, WebSocket and Socket.IO of one app, all on one backend (through wsgate: affinity cookie issued)', T, async () => {
  const browser = await startBrowser();
  try {
    const page = await browser.context.newPage();
    await page.goto(`${gateway.url}/`);
    const r = await (await page.waitForFunction(() => window.result?.ws && window.result?.sio && window.result?.sioTransport && window.result, null, { timeout: 20000, polling: 50 })).jsonValue();
    assert.ok(['one', 'two'].includes(r.page), JSON.stringify(r));
    assert.equal(r.api, r.page, JSON.stringify(r));
    assert.equal(r.ws, `${r.page}:ping`, JSON.stringify(r));
    assert.equal(r.sio, r.page, JSON.stringify(r));
    assert.equal(r.sioTransport, 'websocket', JSON.stringify(r));
    if (FRONT === 'nginx') return; // the affinity cookie is wsgate's
    const cookies = await browser.context.cookies(gateway.url);
    const c = cookies.find((x) => x.name === 'wsgate_affinity');
    assert.ok(c, `affinity cookie set: ${JSON.stringify(cookies)}`);
    assert.equal(c.httpOnly, true);
    assert.equal(c.sameSite, 'Lax');
    assert.match(c.value, /^[A-Za-z0-9_-]{22}$/, 'a 128-bit tag, no name or address');
  } finally {
    await browser.close();
  }
});

test('SockJS client at its defaults through the gateway', T, async () => {
  const { default: SockJS } = await import('sockjs-client');
  const sock = new SockJS(`${gateway.url}/sockjs`);
  try {
    await within(new Promise((r, j) => ((sock.onopen = r), (sock.onclose = (e) => j(new Error(`closed ${e.code} ${e.reason}`))))), 15000, 'sockjs open');
    const got = new Promise((r) => (sock.onmessage = (e) => r(e.data)));
    sock.send('hi');
    const echo = await within(got, 10000, 'sockjs echo');
    assert.match(echo, /^(one|two):hi$/);
    assert.equal(sock.transport, 'websocket');
  } finally {
    sock.onclose = null;
    sock.close();
    await sleep(50);
  }
});
