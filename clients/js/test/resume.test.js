// Resumable sessions end to end, in Node (WsgateClient on the `ws` package's
// WebSocket) and in headless Chromium: the client (resume: true) -> a TCP proxy that cuts the link mid-stream (a reset, no
// close frame) -> the real wsgate with [resume] enabled -> a plain backend that
// knows nothing about resumption. Both ends send numbered messages at a steady
// rate; after 100 cuts every number arrived exactly once and in order, both ways.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { WsgateClient } from '../wsgate-client.js';
import { Gateway, sleep, DIRECT, openPage, startBrowser, startStatic } from './harness.js';

/** Polls `pred` every 10 ms, up to `ms`. */
async function until(pred, ms, what) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Echoes, and sends b1, b2, ... every `tick` ms; records what it got. */
function tickingBackend(tick) {
  const log = { received: [], sent: 0, connections: 0, closes: [], stop: false };
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', (ws) => {
    log.connections++;
    const timer = setInterval(() => {
      if (log.stop || ws.readyState !== WebSocket.OPEN) return;
      ws.send(`b${++log.sent}`);
    }, tick);
    ws.on('message', (data, binary) => {
      const t = data.toString();
      log.received.push(t);
      ws.send(binary ? data : t);
    });
    ws.on('close', (code, reason) => {
      clearInterval(timer);
      log.closes.push([code, reason.toString()]);
    });
  });
  return new Promise((r) => wss.on('listening', () => r({ wss, log, port: wss.address().port })));
}

/** A TCP proxy whose links `cut()` resets at once. */
function cuttingProxy(targetPort) {
  const links = new Set();
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    links.add(pair);
    const drop = () => {
      links.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((r) =>
    server.listen(0, '127.0.0.1', () =>
      r({
        server,
        port: server.address().port,
        cut() {
          const n = links.size;
          for (const { client, upstream } of links) {
            client.resetAndDestroy();
            upstream.resetAndDestroy();
          }
          links.clear();
          return n;
        },
      }),
    ),
  );
}

const expectSeq = (what, got, prefix, n) => {
  const want = Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);
  const bad = got.findIndex((g, i) => g !== want[i]);
  assert.ok(got.length === n && bad < 0, `${what}: ${got.length} messages, want ${n}; first difference at ${bad}: ${got[bad]}`);
};

test('100 cuts: every message exactly once and in order, both ways', { skip: DIRECT && 'needs the gateway', timeout: 120000 }, async () => {
  const backend = await tickingBackend(3);
  const gateway = await new Gateway(backend.port, 0, '[resume]\nenabled = true\nwindow = "10s"\n').start();
  const proxy = await cuttingProxy(Number(new URL(gateway.url).port));
  const client = new WsgateClient(`ws://127.0.0.1:${proxy.port}/chat`, {
    WebSocket,
    resume: true,
    base: 10,
    cap: 40,
    resetAfter: 1,
    maxRetries: Infinity,
    heartbeatInterval: 0,
  });
  const gotB = [];
  const gotC = [];
  const lost = [];
  client.addEventListener('message', (e) => (String(e.data).startsWith('b') ? gotB : gotC).push(String(e.data)));
  client.addEventListener('statelost', (e) => lost.push(e.reason));
  // Counted from events: a reconnect can finish between two polls of the state.
  let drops = 0;
  client.addEventListener('statechange', (e) => {
    if (e.previous === 'open' && e.state !== 'open') drops++;
  });
  try {
    await until(() => client.state === 'open', 10000, 'open');
    let sent = 0;
    const sender = setInterval(() => client.send(`c${++sent}`), 3);
    let cuts = 0;
    for (let i = 0; i < 100; i++) {
      await until(() => client.state === 'open', 10000, `open before cut ${i}`);
      await sleep(40);
      const before = drops;
      if (proxy.cut() > 0) cuts++;
      await until(() => drops > before, 10000, `the client noticed cut ${i}`);
    }
    await until(() => client.state === 'open', 10000, 'open after the cuts');
    clearInterval(sender);
    backend.log.stop = true;
    await sleep(50);
    const nB = backend.log.sent;
    await until(() => backend.log.received.length >= sent && gotB.length >= nB && gotC.length >= sent, 10000, 'everything delivered');
    await sleep(200); // a duplicate would arrive now
    assert.equal(cuts, 100);
    assert.deepEqual(lost, []);
    assert.equal(backend.log.connections, 1, 'the backend saw one connection for all 100 cuts');
    assert.deepEqual(backend.log.closes, []);
    expectSeq('backend received', backend.log.received, 'c', sent);
    expectSeq('client received', gotB, 'b', nB);
    expectSeq('client received echoes', gotC, 'c', sent);
    console.log(`100 cuts: ${sent} messages up, ${nB} + ${sent} down, each exactly once and in order`);
  } finally {
    client.close();
    proxy.server.close();
    await gateway.stop();
    backend.wss.close();
  }
});

test('100 cuts in headless Chromium: every message exactly once and in order, both ways', { skip: DIRECT && 'needs the gateway', timeout: 180000 }, async () => {
  const backend = await tickingBackend(3);
  const gateway = await new Gateway(backend.port, 0, '[resume]\nenabled = true\nwindow = "10s"\n').start();
  const proxy = await cuttingProxy(Number(new URL(gateway.url).port));
  const web = await startStatic();
  const browser = await startBrowser();
  try {
    const page = await openPage(browser.context, web.origin);
    await page.evaluate((url) => {
      makeClient('r', url, { resume: true, base: 10, cap: 40, resetAfter: 1, maxRetries: Infinity, heartbeatInterval: 0 });
      const c = clients.r;
      window.drops = 0;
      window.lost = [];
      window.sent = 0;
      c.addEventListener('statechange', (e) => {
        if (e.previous === 'open' && e.state !== 'open') drops++;
      });
      c.addEventListener('statelost', (e) => lost.push(e.reason));
      window.sender = setInterval(() => c.send(`c${++window.sent}`), 3);
    }, `ws://127.0.0.1:${proxy.port}/chat`);
    const inPage = (fn, arg) => page.evaluate(fn, arg);
    let cuts = 0;
    for (let i = 0; i < 100; i++) {
      const end = Date.now() + 10000;
      while ((await inPage(() => clients.r.state)) !== 'open') {
        if (Date.now() > end) throw new Error(`not open before cut ${i}`);
        await sleep(10);
      }
      await sleep(40);
      const before = await inPage(() => drops);
      if (proxy.cut() > 0) cuts++;
      const end2 = Date.now() + 10000;
      while ((await inPage(() => drops)) === before) {
        if (Date.now() > end2) throw new Error(`the page did not notice cut ${i}`);
        await sleep(5);
      }
    }
    const end = Date.now() + 10000;
    while ((await inPage(() => clients.r.state)) !== 'open') {
      if (Date.now() > end) throw new Error('not open after the cuts');
      await sleep(10);
    }
    const sent = await inPage(() => {
      clearInterval(sender);
      return window.sent;
    });
    backend.log.stop = true;
    await sleep(50);
    const nB = backend.log.sent;
    const got = () => inPage(() => logs.r.messages.map(String));
    const end3 = Date.now() + 10000;
    for (;;) {
      const m = await got();
      if (backend.log.received.length >= sent && m.length >= nB + sent) break;
      if (Date.now() > end3) break;
      await sleep(50);
    }
    await sleep(200);
    const messages = await got();
    assert.equal(cuts, 100);
    assert.deepEqual(await inPage(() => lost), []);
    assert.equal(backend.log.connections, 1, 'the backend saw one connection for all 100 cuts');
    expectSeq('backend received', backend.log.received, 'c', sent);
    expectSeq('page received', messages.filter((m) => m.startsWith('b')), 'b', nB);
    expectSeq('page received echoes', messages.filter((m) => m.startsWith('c')), 'c', sent);
    console.log(`Chromium, 100 cuts: ${sent} messages up, ${nB} + ${sent} down, each exactly once and in order`);
    await inPage(() => clients.r.close());
  } finally {
    await browser.close();
    web.server.close();
    proxy.server.close();
    await gateway.stop();
    backend.wss.close();
  }
});
