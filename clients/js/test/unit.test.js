// Unit tests in Node with a virtual clock and a fake WebSocket: every rule of
// clients/README.md, deterministic and in milliseconds of real time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient, backoffDelay, closeAction, DEFAULTS } from '../wsgate-client.js';
import { fakeClock, FakeWebSocket as WS } from './fakes.js';

/** A client on a fake socket, with everything it emits recorded. */
function make(options = {}, randoms) {
  WS.all = [];
  const clock = fakeClock(randoms);
  const c = new WsgateClient('ws://gw.test/app', { WebSocket: WS, clock, ...options });
  const log = { states: [], closes: [], errors: [], messages: [], drops: [], opens: 0 };
  c.addEventListener('statechange', (e) => log.states.push({ state: e.state, attempt: e.attempt, delay: e.delay, code: e.code }));
  c.addEventListener('close', (e) => log.closes.push({ code: e.code, reason: e.reason, action: e.action, local: e.local }));
  c.addEventListener('error', (e) => log.errors.push(e.error));
  c.addEventListener('message', (e) => log.messages.push(e.data));
  c.addEventListener('drop', (e) => log.drops.push(e.data));
  c.addEventListener('open', () => log.opens++);
  return { c, clock, log };
}
const delaysOf = (log) => log.states.filter((s) => s.state === 'reconnecting').map((s) => s.delay);

test('backoffDelay: jitter applied after the cap, 0.5x to 1.5x', () => {
  assert.equal(backoffDelay(0, 1000, 30000, () => 0), 500);
  assert.ok(Math.abs(backoffDelay(0, 1000, 30000, () => 0.999999) - 1499.999) < 1e-6);
  assert.equal(backoffDelay(3, 1000, 30000, () => 0.5), 8000);
  assert.equal(backoffDelay(10, 1000, 30000, () => 0), 15000); // capped, then jittered
  assert.ok(Math.abs(backoffDelay(10, 1000, 30000, () => 0.999999) - 44999.97) < 1e-6);
  assert.equal(backoffDelay(5000, 1000, 30000, () => 0.5), 30000); // 2^5000 = Infinity is fine
  // The long backoff: at least half the cap, then the normal curve once it is higher.
  assert.deepEqual([0, 1, 3, 4, 5].map((n) => backoffDelay(n, 1000, 30000, () => 0.5, true)), [15000, 15000, 15000, 16000, 30000]);
});

test('closeAction follows the SPEC table', () => {
  const table = {
    none: [1000],
    stop: [1002, 1003, 1007, 1009, 1010, 4008],
    long: [1008, 1013, 4029],
    normal: [1001, 1005, 1006, 1011, 1012, 1014, 3000],
    app: [4000, 4002, 4999],
  };
  for (const [action, codes] of Object.entries(table)) for (const code of codes) assert.equal(closeAction(code, 'x'), action, `code ${code}`);
  assert.equal(closeAction(4001, 'token expired'), 'refresh');
  assert.equal(closeAction(4001, ' Token Expired '), 'refresh');
  assert.equal(closeAction(4001, 'token expired soon'), 'stop');
  assert.equal(closeAction(4001, 'authentication failed'), 'stop');
});

test('failed connects back off with fresh jitter and stop after maxRetries', async () => {
  const randoms = [0, 0.25, 0.5, 0.75, 0.999, 0.1];
  const { c, clock, log } = make({ maxRetries: 5, connectTimeout: 1e9 }, [...randoms]);
  for (let i = 0; i < 6; i++) {
    await clock.advance(0);
    assert.equal(WS.all.length, i + 1, `attempt ${i}`);
    WS.last.serverClose(1006);
    await clock.advance(60000);
  }
  const want = randoms.slice(0, 5).map((r, n) => Math.min(30000, 1000 * 2 ** n) * (0.5 + r));
  assert.deepEqual(delaysOf(log), want);
  assert.deepEqual(log.states.filter((s) => s.state === 'reconnecting').map((s) => s.attempt), [1, 2, 3, 4, 5]);
  assert.equal(c.state, 'closed');
  assert.equal(log.errors.length, 1);
  assert.equal(log.errors[0].kind, 'max_retries');
  await clock.advance(600000);
  assert.equal(WS.all.length, 6, 'no retry after giving up');
});

test('a link that stays open resetAfter resets the backoff; a flapping one does not', async () => {
  const { clock, log } = make({}, [0, 0, 0, 0]);
  await clock.advance(0);
  WS.last.open();
  await clock.advance(1000); // shorter than resetAfter
  WS.last.serverClose(1006);
  await clock.advance(600);
  WS.last.open();
  await clock.advance(1000);
  WS.last.serverClose(1006); // second failure in a row: 1 s base * 2
  await clock.advance(1100);
  WS.last.open();
  await clock.advance(DEFAULTS.resetAfter);
  WS.last.serverClose(1001); // after a stable link: back to the first step
  assert.deepEqual(delaysOf(log), [500, 1000, 500]);
});

test('close codes: 1000 ends quietly, 1002 and 4001 stop and report, nothing retries', async () => {
  for (const [code, reason, kind] of [
    [1000, '', null],
    [1002, 'bad frame', 'close'],
    [1009, 'too big', 'close'],
    [4001, 'authentication failed', 'auth'],
    [4008, 'no token', 'auth'],
  ]) {
    const { c, clock, log } = make();
    await clock.advance(0);
    WS.last.open();
    WS.last.serverClose(code, reason);
    await clock.advance(600000);
    assert.equal(WS.all.length, 1, `no reconnect after ${code}`);
    assert.equal(c.state, 'closed');
    assert.equal(log.errors[0]?.kind ?? null, kind, `code ${code}`);
    if (kind) assert.equal(log.errors[0].reason, reason, 'the reason is kept for the app');
    assert.equal(log.closes[0].reason, reason);
  }
});

test('1008, 1013, 4029 use the long backoff, starting at half the cap', async () => {
  for (const code of [1008, 1013, 4029]) {
    const { clock, log } = make({ connectTimeout: 1e9, base: 5000 }, [0, 0.5, 0.5]);
    await clock.advance(0);
    WS.last.open();
    WS.last.serverClose(code, 'slow down');
    for (let i = 0; i < 2; i++) {
      await clock.advance(60000);
      WS.last.serverClose(code, 'slow down');
    }
    assert.deepEqual(delaysOf(log), [7500, 15000, 20000], `${code}: cap/2 * 0.5, cap/2, base * 4`);
  }
});

test('other 4000-4999: the app callback decides, default stop', async () => {
  let { clock, log } = make();
  await clock.advance(0);
  WS.last.serverClose(4100, 'custom');
  await clock.advance(60000);
  assert.equal(WS.all.length, 1);
  assert.equal(log.errors[0].code, 4100);

  const seen = [];
  ({ clock, log } = make({ onAppClose: (code, reason) => (seen.push([code, reason]), 'normal') }));
  await clock.advance(0);
  WS.last.serverClose(4100, 'custom');
  await clock.advance(2000);
  assert.deepEqual(seen, [[4100, 'custom']]);
  assert.equal(WS.all.length, 2);
});

test('4001 "token expired": fresh token, reconnect at once, only once', async () => {
  let n = 0;
  const calls = [];
  const { c, clock, log } = make({
    token: (ctx) => {
      calls.push(ctx);
      return `t${++n}`;
    },
  });
  await clock.advance(0);
  assert.equal(new URL(WS.last.url).searchParams.get('token'), 't1');
  WS.last.open();
  WS.last.serverClose(4001, 'token expired');
  assert.deepEqual(log.states.at(-2), { state: 'reconnecting', attempt: 1, delay: 0, code: 4001 });
  await clock.advance(0); // no delay at all
  assert.equal(WS.all.length, 2);
  assert.equal(new URL(WS.last.url).searchParams.get('token'), 't2');
  assert.deepEqual(calls[1].refused, ['t1']);
  assert.equal(calls[1].code, 4001);
  WS.last.open();
  WS.last.serverClose(4001, 'token expired'); // the second auth failure stops
  await clock.advance(600000);
  assert.equal(WS.all.length, 2);
  assert.equal(c.state, 'closed');
  assert.equal(log.errors[0].kind, 'auth');
});

test('a token the server refused is never sent again', async () => {
  const { c, clock, log } = make({ token: () => 'same' });
  await clock.advance(0);
  WS.last.open();
  WS.last.serverClose(4001, 'token expired');
  await clock.advance(0);
  assert.equal(WS.all.length, 1, 'the refused token was not reused');
  assert.equal(c.state, 'closed');
  assert.match(log.errors[0].message, /already refused/);
});

test('tokenIn first_message sends the token before anything queued', async () => {
  const { c, clock } = make({ token: () => 'secret', tokenIn: 'first_message' });
  c.send('a');
  await clock.advance(0);
  assert.equal(WS.last.url, 'ws://gw.test/app');
  WS.last.open();
  assert.deepEqual(WS.last.sent, ['secret', 'a']);
});

test('connect timeout covers a hung token provider and a silent handshake', async () => {
  const { clock, log } = make({ token: () => new Promise(() => {}), connectTimeout: 2000, maxRetries: 1 });
  await clock.advance(2000);
  assert.deepEqual(log.closes[0], { code: 4000, reason: 'connect timeout', action: 'normal', local: true });
  const r = make({ connectTimeout: 2000 });
  await r.clock.advance(2000);
  assert.equal(r.log.closes[0].reason, 'connect timeout');
  assert.deepEqual(WS.all[0].closedWith, { code: 4000, reason: 'connect timeout' });
});

test('queue: bounded by count and bytes, reject or dropOldest, flushed in order', async () => {
  let { c, clock, log } = make({ maxQueuedMessages: 3, maxQueuedBytes: 10 });
  assert.equal(c.send('aaa'), true);
  assert.equal(c.send('bbb'), true);
  assert.equal(c.send('cccc'), true); // 10 bytes
  assert.equal(c.send('d'), false, 'count bound');
  assert.equal(c.queued(), 3);
  assert.equal(c.queuedBytes(), 10);
  await clock.advance(0);
  WS.last.open();
  assert.deepEqual(WS.last.sent, ['aaa', 'bbb', 'cccc']);
  assert.equal(c.queued(), 0);

  ({ c, clock, log } = make({ maxQueuedMessages: 3, maxQueuedBytes: 7, overflow: 'dropOldest' }));
  for (const m of ['1', '22', '333', '4444']) assert.equal(c.send(m), true);
  assert.deepEqual(log.drops, ['1', '22'], 'bytes bound dropped the two oldest');
  assert.equal(c.send('é'.repeat(4)), false, '8 UTF-8 bytes can never fit in 7');
  assert.equal(c.clearQueue(), 2);
  assert.equal(c.queued(), 0);
  c.close();
  assert.equal(c.send('x'), false, 'closed');
});

test('backpressure: drain stops above highWaterMark, resumes below lowWaterMark', async () => {
  const { c, clock } = make({ highWaterMark: 100, lowWaterMark: 20, drainInterval: 10, heartbeatInterval: 0 });
  await clock.advance(0);
  const ws = WS.last;
  ws.send = function (d) {
    this.sent.push(d);
    this.bufferedAmount += d.length; // nothing leaves until the test says so
  };
  ws.open();
  for (let i = 0; i < 10; i++) c.send('x'.repeat(40));
  assert.equal(ws.sent.length, 3, 'sent until over 100 buffered');
  assert.equal(c.queued(), 7);
  ws.bufferedAmount = 50; // under high but over low: still paused
  await clock.advance(50);
  assert.equal(ws.sent.length, 3);
  ws.bufferedAmount = 0;
  await clock.advance(10);
  assert.equal(ws.sent.length, 6);
  ws.bufferedAmount = 0;
  await clock.advance(10);
  assert.equal(ws.sent.length, 9);
  ws.bufferedAmount = 0;
  await clock.advance(10);
  assert.equal(ws.sent.length, 10);
  assert.equal(c.queued(), 0);
  c.send('after');
  assert.equal(ws.sent.at(-1), 'after', 'an empty queue sends directly again');
});

test('heartbeat: ping after silence, pong consumed, silence kills the link', async () => {
  const { c, clock, log } = make({ heartbeatInterval: 30000, heartbeatTimeout: 10000 }, [0]);
  await clock.advance(0);
  const ws = WS.last;
  ws.open();
  await clock.advance(29000);
  ws.receive('hello'); // traffic postpones the ping
  await clock.advance(29000);
  assert.deepEqual(ws.sent, []);
  await clock.advance(1000);
  assert.deepEqual(ws.sent, ['{"type":"ping"}']);
  ws.receive('{"type":"pong"}');
  assert.deepEqual(log.messages, ['hello'], 'the pong is not delivered');
  await clock.advance(30000);
  assert.equal(ws.sent.length, 2);
  await clock.advance(9999);
  assert.equal(c.state, 'open');
  await clock.advance(1);
  assert.equal(c.state, 'reconnecting');
  assert.deepEqual(log.closes.at(-1), { code: 4000, reason: 'heartbeat timeout', action: 'normal', local: true });
  assert.deepEqual(ws.closedWith, { code: 4000, reason: 'heartbeat timeout' });
  ws.serverClose(1006); // the old socket's late close is ignored
  await clock.advance(500);
  assert.equal(WS.all.length, 2);
});

test('statechange carries attempt and delay for a "reconnecting in N s" UI; close() is final', async () => {
  const { c, clock, log } = make({}, [0.5]);
  await clock.advance(0);
  WS.last.open();
  WS.last.serverClose(1012, 'restart');
  assert.deepEqual(log.states.at(-1), { state: 'reconnecting', attempt: 1, delay: 1000, code: 1012 });
  await clock.advance(1000);
  assert.equal(c.state, 'connecting');
  c.close();
  assert.equal(c.state, 'closed');
  await clock.advance(600000);
  assert.equal(WS.all.length, 2);
  c.reconnect();
  await clock.advance(0);
  assert.equal(WS.all.length, 3, 'reconnect() restarts a closed client');
});

test('resume: offer, hello, acks, escaping, replay after a cut, statelost', async () => {
  const { c, clock, log } = make({ resume: true, protocols: 'chat' }, [0, 0, 0, 0]);
  const lost = [];
  c.addEventListener('statelost', (e) => lost.push(e.reason));
  await clock.advance(0);
  assert.deepEqual(WS.last.protocols, ['chat', 'wsgate.resume.v1']);
  WS.last.open();
  c.send('a');
  assert.deepEqual(WS.last.sent, [], 'nothing is written before the hello');
  WS.last.receive('\0hello cred1 0 new');
  assert.deepEqual(WS.last.sent, ['a']);
  c.send('\0nul');
  assert.deepEqual(WS.last.sent, ['a', '\0\0nul'], 'an app text led by NUL is escaped');
  WS.last.receive('x');
  WS.last.receive('\0\0y');
  WS.last.receive('\0ack 1'); // the gateway has 'a'
  WS.last.receive('\0pong');
  assert.deepEqual(log.messages, ['x', '\0y'], 'control never reaches the app');
  await clock.advance(100);
  assert.equal(WS.last.sent.at(-1), '\0ack 2', 'received messages are acknowledged');
  c.send('b');
  // Cut: no close frame. The next link offers the credential and what we received.
  WS.last.serverClose(1006);
  await clock.advance(1000);
  assert.deepEqual(WS.last.protocols, ['chat', 'wsgate.resume.v1', 'wsgate.resume.v1.cred1.2']);
  WS.last.open();
  // The gateway got 'a' and '\0nul' (2), not 'b': only 'b' goes again.
  WS.last.receive('\0hello cred2 2 resumed');
  assert.deepEqual(WS.last.sent, ['b']);
  assert.deepEqual(lost, []);
  // The gateway lost it: a fresh session, told once.
  WS.last.serverClose(1006);
  await clock.advance(1000);
  assert.deepEqual(WS.last.protocols, ['chat', 'wsgate.resume.v1', 'wsgate.resume.v1.cred2.2']);
  WS.last.open();
  WS.last.receive('\0hello cred3 0 lost:expired');
  assert.deepEqual(lost, ['expired']);
  assert.deepEqual(WS.last.sent, [], 'nothing from the lost session is replayed');
  // close() forgets the session: the next start offers no credential.
  c.close();
  c.reconnect();
  await clock.advance(0);
  assert.deepEqual(WS.last.protocols, ['chat', 'wsgate.resume.v1']);
});

test('resume: without a hello the link is plain', async () => {
  const { c, clock, log } = make({ resume: true }, [0]);
  await clock.advance(0);
  WS.last.open();
  c.send('a');
  WS.last.receive('first');
  assert.deepEqual(WS.last.sent, ['a']);
  WS.last.receive('\0raw');
  assert.deepEqual(log.messages, ['first', '\0raw']);
  c.send('later');
  await clock.advance(0);
  assert.deepEqual(WS.last.sent, ['a', 'later']);
  // A silent server: the hello wait ends after 5 s.
  WS.last.serverClose(1006);
  await clock.advance(1000);
  WS.last.open();
  c.send('b');
  await clock.advance(4999);
  assert.deepEqual(WS.last.sent, []);
  await clock.advance(1);
  assert.deepEqual(WS.last.sent, ['b']);
});
