// python-socketio 5 on uvicorn, two instances behind the real wsgate binary,
// driven by python-socketio's own asyncio client at its defaults.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { App, startFront, waitFor } from './harness.js';

const py = join(import.meta.dirname, '.venv', 'bin', 'python');
let apps, gateway;

before(async () => {
  apps = await Promise.all(['one', 'two'].map((n) => new App(py, ['pyapp.py', n]).start()));
  // uvicorn says it listens before it serves; a front that meets a refused or
  // failed first request marks that backend down for a while (nginx's
  // max_fails=1 fail_timeout=10s), which would route every client to the other.
  const serving = (a) => fetch(`http://127.0.0.1:${a.port}/healthz`).then((r) => r.ok).catch(() => false);
  await waitFor(async () => (await Promise.all(apps.map(serving))).every(Boolean), 'both apps serving /healthz');
  gateway = await startFront(apps.map((a) => a.port));
});

after(async () => {
  await gateway?.stop();
  for (const a of apps ?? []) await a.stop();
});

test('python-socketio on uvicorn: 12 clients from 12 addresses, polling then websocket, acks, broadcast, both backends', { timeout: 90000 }, async () => {
  const out = await new Promise((resolve, reject) =>
    execFile(py, ['pyclient.py', gateway.url, '12', '80'], { timeout: 80000 }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(stdout))),
  );
  const sessions = JSON.parse(out.trim().split('\n').pop());
  assert.equal(sessions.length, 12);
  for (const s of sessions) {
    assert.equal(s.transport, 'websocket', JSON.stringify(s));
    assert.equal(s.second, s.first, `one backend for polling and websocket: ${JSON.stringify(s)}`);
    assert.equal(s.broadcast, `${s.first}:hi`);
    const seen = apps.filter((a) => a.events.some((e) => e.ev === 'sio' && e.id === s.sid));
    assert.equal(seen.length, 1);
    assert.equal(seen[0].args[1], s.first);
    // Polling requests of the session after its handshake, if any, all
    // reached that backend.
    const polls = (a) => a.events.filter((e) => e.ev === 'poll' && e.eio_sid === s.eio_sid).length;
    assert.equal(apps.reduce((n, a) => n + polls(a), 0), polls(seen[0]), 'no poll on the other backend');
  }
  // Each session began with a long-polling handshake (no sid yet) on the
  // backend that then served it: handshakes per backend = sessions per backend.
  for (const [i, name] of ['one', 'two'].entries()) {
    const handshakes = apps[i].events.filter((e) => e.ev === 'poll' && e.eio_sid === null).length;
    assert.equal(handshakes, sessions.filter((s) => s.first === name).length, `handshakes on ${name}`);
  }
  const names = new Set(sessions.map((s) => s.first));
  assert.deepEqual([...names].sort(), ['one', 'two'], 'both backends used');
});
