// Browser tests: headless Chromium loads the module from a page on 127.0.0.1
// and talks through the real wsgate gateway to a real (Node) backend.
// WSGATE_TEST_DIRECT=1 skips the gateway (pages talk to the backend) for
// working on the client while the gateway does not build.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { Backend, DIRECT, Gateway, openPage, sleep, startBrowser, startStatic, until, waitFor } from './harness.js';

let web, backend, gateway, deadGateway, browser, deadPort, restarted;
const T = { timeout: 40000 };

/** A port nothing listens on. */
async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

before(async () => {
  web = await startStatic();
  backend = await new Backend().start();
  deadPort = await freePort();
  if (!DIRECT) {
    gateway = await new Gateway(backend.port).start();
    deadGateway = await new Gateway(deadPort).start(); // its backend never answers: HTTP 502
  }
  browser = await startBrowser();
  console.log(`# mode: ${DIRECT ? 'direct to the Node backend (no gateway)' : `through wsgate at ${gateway.url}`}`);
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  await deadGateway?.stop();
  await restarted?.stop();
  await backend?.kill();
  web?.server.close();
});

const wsUrl = (path) => (DIRECT ? `ws://127.0.0.1:${backend.port}` : gateway.url) + path;
/** The process whose freezing kills the client's link. */
const frontPid = () => (DIRECT ? backend.pid() : gateway.pid());
const fast = { base: 200, cap: 1000, resetAfter: 1000, connectTimeout: 3000 };

test('backoff: failed attempts wait within the jitter bounds, then give up (accelerated clock)', T, async () => {
  const page = await openPage(browser.context, web.origin);
  const url = DIRECT ? `ws://127.0.0.1:${deadPort}/t-backoff` : `${deadGateway.url}/t-backoff`;
  const speedup = 100;
  await page.evaluate(
    ({ url, speedup }) => {
      // Default numbers (1 s base, 30 s cap), time running 100x faster.
      const clock = {
        setTimeout: (fn, ms) => setTimeout(fn, ms / speedup),
        clearTimeout: (id) => clearTimeout(id),
        now: () => performance.now() * speedup,
      };
      makeClient('b', url, { maxRetries: 6, clock });
    },
    { url, speedup },
  );
  await until(page, () => logs.b.errors.length > 0, null, 'giving up after maxRetries', 20000);
  const log = await page.evaluate(() => ({ ...logs.b, state: clients.b.state }));
  assert.equal(log.state, 'closed');
  assert.equal(log.errors[0].kind, 'max_retries');
  assert.ok(log.opens === 0 && log.closes.every((c) => c.code === 1006), 'a refused upgrade shows as 1006 before open');

  const waits = log.states.filter((s) => s.state === 'reconnecting');
  assert.deepEqual(waits.map((s) => s.attempt), [1, 2, 3, 4, 5, 6]);
  const factors = waits.map((s, n) => s.delay / Math.min(30000, 1000 * 2 ** n));
  for (const f of factors) assert.ok(f >= 0.5 && f < 1.5, `jitter factor ${f} within [0.5, 1.5)`);
  assert.equal(new Set(factors).size, factors.length, 'a fresh random draw every attempt');
  // Each retry really starts after the announced delay (scaled). The first
  // attempt is not in the list: a client starts out 'connecting'.
  const retries = log.states.filter((s) => s.state === 'connecting');
  assert.equal(retries.length, waits.length);
  for (let i = 0; i < waits.length; i++) {
    const waited = retries[i].at - waits[i].at;
    assert.ok(waited >= waits[i].delay / speedup - 2, `attempt ${i + 1} waited ${waited} ms for ${waits[i].delay / speedup}`);
  }
  await page.close();
});

test('4001 "authentication failed" stops without reconnecting; "token expired" refreshes once', T, async () => {
  const page = await openPage(browser.context, web.origin);
  await page.evaluate((url) => {
    makeClient('a', url, { base: 50, cap: 100 });
  }, wsUrl('/t-4001'));
  await until(page, () => clients.a.state === 'open', null, 'open');
  await page.evaluate(() => clients.a.send('close:4001:authentication failed'));
  await until(page, () => logs.a.errors.length > 0, null, 'the auth error');
  await sleep(1000); // with a 50 ms base, a retry would have happened by now
  let log = await page.evaluate(() => ({ ...logs.a, state: clients.a.state }));
  assert.deepEqual(log.closes, [{ code: 4001, reason: 'authentication failed', action: 'stop', local: false }]);
  assert.deepEqual(log.errors[0], { kind: 'auth', code: 4001, reason: 'authentication failed', message: 'closed with 4001 authentication failed' });
  assert.equal(log.state, 'closed');
  assert.equal(backend.conns('/t-4001').length, 1, 'no second connection');

  await page.evaluate((url) => {
    window.tokens = [];
    makeClient('e', url, { base: 50, cap: 100, token: (ctx) => (tokens.push(ctx.refused), `tok${tokens.length}`) });
  }, wsUrl('/t-expired'));
  await until(page, () => clients.e.state === 'open', null, 'open');
  await page.evaluate(() => clients.e.send('close:4001:token expired'));
  await until(page, () => logs.e.opens === 2, null, 'the reconnect with a fresh token');
  await page.evaluate(() => clients.e.send('close:4001:token expired'));
  await until(page, () => logs.e.errors.length > 0, null, 'the second auth failure to stop');
  await sleep(500);
  log = await page.evaluate(() => ({ ...logs.e, tokens, state: clients.e.state }));
  assert.deepEqual(log.tokens, [[], ['tok1']], 'the provider was asked again and told which token was refused');
  assert.equal(log.state, 'closed');
  assert.equal(log.errors[0].kind, 'auth');
  assert.equal(backend.conns('/t-expired').length, 2);
  await page.close();
});

test('reconnects after the backend is killed and revived', T, async () => {
  const page = await openPage(browser.context, web.origin);
  await page.evaluate((url) => makeClient('r', url, { base: 200, cap: 1000, maxRetries: 100 }), wsUrl('/t-revive'));
  await until(page, () => clients.r.state === 'open', null, 'open');
  await page.evaluate(() => clients.r.send('before'));
  await until(page, () => logs.r.messages.includes('before'), null, 'echo');
  await backend.kill();
  await until(page, () => logs.r.closes.length > 0, null, 'the close');
  await sleep(800); // a few failed attempts while the backend is down
  await backend.start();
  await until(page, () => logs.r.opens === 2, null, 'the reconnect', 15000);
  await page.evaluate(() => clients.r.send('after'));
  await until(page, () => logs.r.messages.includes('after'), null, 'echo after revival');
  const log = await page.evaluate(() => logs.r);
  // The gateway tells the client its backend died (1014); directly, the TCP reset shows as 1006.
  assert.equal(log.closes[0].code, DIRECT ? 1006 : 1014, JSON.stringify(log.closes[0]));
  assert.equal(log.closes[0].action, 'normal');
  assert.ok(log.states.some((s) => s.state === 'reconnecting'));
  assert.equal(log.errors.length, 0);
  await page.close();
});

test('messages sent while not open are queued and flushed in order', T, async () => {
  const page = await openPage(browser.context, web.origin);
  await page.evaluate((url) => {
    makeClient('q', url, { ...{ base: 200, cap: 1000, maxRetries: 100 } });
    for (let i = 0; i < 10; i++) clients.q.send(`m${i}`); // before the first open
  }, wsUrl('/t-queue'));
  await until(page, () => logs.q.messages.length === 10, null, 'the first 10 echoes');
  await backend.kill();
  await until(page, () => clients.q.state !== 'open', null, 'the drop');
  const queued = await page.evaluate(() => {
    for (let i = 10; i < 50; i++) clients.q.send(`m${i}`);
    return clients.q.queued();
  });
  assert.equal(queued, 40);
  await backend.start();
  await until(page, () => logs.q.messages.length === 50, null, 'all 50 echoes', 15000);
  const msgs = await page.evaluate(() => logs.q.messages);
  assert.deepEqual(msgs, Array.from({ length: 50 }, (_, i) => `m${i}`));
  assert.equal(await page.evaluate(() => clients.q.queued()), 0);
  await page.close();
});

test('a frozen gateway is detected by the app heartbeat, and the client comes back', T, async () => {
  const page = await openPage(browser.context, web.origin);
  await page.evaluate((url) => makeClient('h', url, { base: 200, cap: 1000, maxRetries: 100, heartbeatInterval: 300, heartbeatTimeout: 700, connectTimeout: 1500 }), wsUrl('/t-heartbeat'));
  await until(page, () => clients.h.state === 'open', null, 'open');
  await sleep(1500); // several ping/pong rounds: the gateway's app_pong keeps it open
  let log = await page.evaluate(() => ({ ...logs.h, state: clients.h.state }));
  assert.equal(log.state, 'open');
  assert.equal(log.closes.length, 0);
  assert.deepEqual(log.messages, [], 'pongs are consumed, not delivered');

  const pid = frontPid();
  process.kill(pid, 'SIGSTOP');
  try {
    await until(page, () => logs.h.closes.length > 0, null, 'the heartbeat timeout', 5000);
    log = await page.evaluate(() => logs.h);
    assert.deepEqual(log.closes[0], { code: 4000, reason: 'heartbeat timeout', action: 'normal', local: true });
    await sleep(500);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  await until(page, () => logs.h.opens === 2 && clients.h.state === 'open', null, 'the reconnect after SIGCONT', 15000);
  await page.evaluate(() => clients.h.send('alive'));
  await until(page, () => logs.h.messages.includes('alive'), null, 'echo');
  await page.close();
});

test('two tabs share one connection; the other tab takes over when the leader closes', T, async () => {
  const url = wsUrl('/t-share');
  const opts = { shareAcrossTabs: true, base: 200, cap: 1000, maxRetries: 100 };
  const p1 = await openPage(browser.context, web.origin);
  await p1.evaluate(({ url, opts }) => makeClient('s', url, opts), { url, opts });
  await until(p1, () => clients.s.state === 'open' && clients.s.isLeader, null, 'tab 1 leads and is open');
  const p2 = await openPage(browser.context, web.origin);
  await p2.evaluate(({ url, opts }) => makeClient('s', url, opts), { url, opts });
  await until(p2, () => clients.s.state === 'open', null, 'tab 2 sees the shared link open');
  assert.equal(await p2.evaluate(() => clients.s.isLeader), false);

  await p2.evaluate(() => clients.s.send('from-2'));
  await p1.evaluate(() => clients.s.send('from-1'));
  for (const p of [p1, p2]) await until(p, () => logs.s.messages.includes('from-1') && logs.s.messages.includes('from-2'), null, 'both echoes in both tabs');
  assert.equal(backend.conns('/t-share').length, 1, 'one WebSocket for two tabs');

  await p1.close();
  await p2.evaluate(() => clients.s.send('during-failover')); // no leader yet: kept until one acks it
  await until(p2, () => clients.s.isLeader && clients.s.state === 'open', null, 'tab 2 takes over', 10000);
  await until(p2, () => logs.s.messages.includes('during-failover'), null, 'the message sent during failover');
  await p2.evaluate(() => clients.s.send('after'));
  await until(p2, () => logs.s.messages.includes('after'), null, 'echo through the new leader');
  await waitFor(() => backend.conns('/t-share').length === 2, 'the new leader connection');
  const dup = await p2.evaluate(() => logs.s.messages.filter((m) => m === 'during-failover').length);
  assert.equal(dup, 1, 'sent once');
  await p2.close();
});

test('a chat session survives a gateway restart (SIGTERM, new process on the same port)', { ...T, skip: DIRECT && 'no gateway in direct mode' }, async () => {
  const port = await freePort();
  restarted = await new Gateway(backend.port, port).start();
  const url = `${restarted.url}/t-restart`;
  const page = await openPage(browser.context, web.origin);
  await page.evaluate((url) => makeClient('g', url, { base: 100, cap: 400, maxRetries: 100, resetAfter: 1000, connectTimeout: 2000 }), url);
  await until(page, () => clients.g.state === 'open', null, 'open');
  await page.evaluate(() => clients.g.send('before'));
  await until(page, () => logs.g.messages.includes('before'), null, 'echo before the restart');

  const exit = await restarted.terminate();
  assert.equal(exit, 0, 'graceful exit');
  await until(page, () => logs.g.closes.length > 0, null, 'the close');
  let log = await page.evaluate(() => logs.g);
  assert.equal(log.closes[0].code, 1001, JSON.stringify(log.closes[0]));
  assert.equal(log.closes[0].action, 'normal');
  // Down: the message waits in the queue while attempts fail.
  const queued = await page.evaluate(() => (clients.g.send('during'), clients.g.queued()));
  assert.equal(queued, 1);
  await until(page, () => logs.g.states.filter((s) => s.state === 'reconnecting').length >= 2, null, 'a failed attempt during the downtime');
  assert.notEqual(await page.evaluate(() => clients.g.state), 'open');

  await restarted.stop(); // the old process is gone; this only removes its config dir
  restarted = await new Gateway(backend.port, port).start();
  assert.equal(`${restarted.url}/t-restart`, url, 'the new gateway took over the same address');
  await until(page, () => logs.g.opens === 2 && clients.g.state === 'open', null, 'the reconnect to the new gateway', 15000);
  await until(page, () => logs.g.messages.includes('during'), null, 'the queued message');
  await page.evaluate(() => clients.g.send('after'));
  await until(page, () => logs.g.messages.includes('after'), null, 'echo after the restart');
  log = await page.evaluate(() => ({ ...logs.g, queued: clients.g.queued() }));
  assert.deepEqual(log.messages, ['before', 'during', 'after']);
  assert.equal(log.queued, 0);
  assert.equal(log.errors.length, 0);
  assert.equal(backend.conns('/t-restart').length, 2);
  await page.close();
});
