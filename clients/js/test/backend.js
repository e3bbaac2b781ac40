// A WebSocket echo backend for the browser tests, run as a child process so a
// test can kill it (SIGKILL), freeze it (SIGSTOP) and revive it on its port.
//
//   node backend.js PORT [--pong]
//
// Echoes every message. A text message "close:CODE:REASON" makes it close with
// that code and reason. With --pong it answers the app heartbeat itself, for
// runs without a gateway in front (the gateway answers it otherwise).
// Prints one JSON line per event on stdout: listening, conn, close.
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] ?? 0);
const pong = process.argv.includes('--pong');
const wss = new WebSocketServer({ host: '127.0.0.1', port });
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

wss.on('listening', () => say({ ev: 'listening', port: wss.address().port }));
wss.on('connection', (ws, req) => {
  say({ ev: 'conn', url: req.url });
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? null : data.toString();
    const m = text && /^close:(\d+):(.*)$/s.exec(text);
    if (m) return ws.close(Number(m[1]), m[2]);
    if (pong && text === '{"type":"ping"}') return ws.send('{"type":"pong"}');
    ws.send(data, { binary: isBinary });
  });
  ws.on('close', (code, reason) => say({ ev: 'close', url: req.url, code, reason: reason.toString() }));
});
