// Processes for the app tests: backend instances of app.js, the real wsgate
// binary in front of them (two backends, the default pool, health checks at
// their defaults but pointed at the app's /healthz), and headless Chromium.
// Every wait is bounded; every process started here is ended by its PID.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, '..', '..');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolve with `pred(line)` once it is truthy for a stdout line; reject after `ms`. */
function waitLine(child, pred, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}; stderr: ${child.stderrText.slice(-2000)}`)), ms);
    const onLine = (line) => {
      const v = pred(line);
      if (v) {
        clearTimeout(timer);
        child.lines.off('line', onLine);
        resolve(v);
      }
    };
    child.lines.on('line', onLine);
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${what}: process exited (${code ?? sig}) first; stderr: ${child.stderrText.slice(-2000)}`));
    });
  });
}

function start(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  child.lines = createInterface({ input: child.stdout });
  child.stderrText = '';
  child.stderr.on('data', (d) => (child.stderrText = (child.stderrText + d).slice(-20000)));
  return child;
}

async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return;
  }
  await Promise.race([gone, sleep(3000)]);
}

/** A backend instance: `cmd args...` printing {"ev":"listening","port":N} first. */
export class App {
  constructor(cmd, args) {
    this.cmd = cmd;
    this.args = args;
    this.events = [];
  }
  async start() {
    this.child = start(this.cmd, this.args);
    this.child.lines.on('line', (l) => {
      try {
        this.events.push(JSON.parse(l));
      } catch {
        /* not ours */
      }
    });
    const ev = await waitLine(this.child, (l) => l.includes('"listening"') && JSON.parse(l), 20000, `${this.args.join(' ')} listening`);
    this.port = ev.port;
    return this;
  }
  stop() {
    return stop(this.child);
  }
}

export function gatewayBinary() {
  if (process.env.WSGATE_BIN) return process.env.WSGATE_BIN;
  for (const p of ['target/debug/wsgate', 'target/release/wsgate']) if (existsSync(join(repoRoot, p))) return join(repoRoot, p);
  throw new Error('no wsgate binary: run `cargo build -p wsgate` at the repo root (run-tests.sh does)');
}

/** The real gateway in front of `ports`: the config an nginx user would write, minus nginx. */
export class Gateway {
  constructor(ports, extra = '') {
    this.ports = ports;
    this.extra = extra;
    this.dir = mkdtempSync(join(tmpdir(), 'wsgate-apps-'));
  }
  async start() {
    const backends = this.ports.map((p, i) => `[[backends]]\nname = "app${i + 1}"\nurl = "ws://127.0.0.1:${p}"\n`).join('\n');
    const config = `[server]\nlisten = "127.0.0.1:0"\n\n[admin]\nlisten = "127.0.0.1:0"\n\n[health]\nhttp_path = "/healthz"\nws_path = ""\nroute_on = "http"\n\n${this.extra}\n${backends}`;
    const file = join(this.dir, 'wsgate.toml');
    writeFileSync(file, config);
    this.child = start(gatewayBinary(), ['run', '-c', file], { env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
    const m = await waitLine(this.child, (l) => /wsgate listening on ws:\/\/(\S+)/.exec(l), 15000, 'wsgate listening');
    this.host = m[1].replace(/\/$/, '');
    this.url = `http://${this.host}`;
    return this;
  }
  async stop() {
    await stop(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Poll `pred` until truthy; fail with `what` after `ms`. */
export async function waitFor(pred, what, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await pred();
    if (v) return v;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A promise that rejects after `ms` with `what`. */
export function within(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]).finally(() => clearTimeout(t));
}

/** Headless Debian Chromium with a fresh profile. */
export async function startBrowser() {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'wsgate-apps-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(15000);
  const close = async () => {
    await Promise.race([context.close(), sleep(5000)]);
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

/** A port nothing listens on now (nginx cannot listen on port 0 and tell). */
async function freePort() {
  const { createServer } = await import('node:net');
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * nginx in front of `ports`, configured as Socket.IO's documentation says
 * (sticky by the full client address, WebSocket headers, no buffering for
 * event streams): the reference the same tests are held to.
 */
export class Nginx {
  constructor(ports) {
    this.ports = ports;
    this.dir = mkdtempSync(join(tmpdir(), 'wsgate-apps-nginx-'));
  }
  async start() {
    this.port = await freePort();
    const d = this.dir;
    const servers = this.ports.map((p) => `    server 127.0.0.1:${p};`).join('\n');
    const conf = `worker_processes 1;
daemon off;
master_process off;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${d}/body;
  proxy_temp_path ${d}/proxy;
  fastcgi_temp_path ${d}/fastcgi;
  uwsgi_temp_path ${d}/uwsgi;
  scgi_temp_path ${d}/scgi;
  upstream app {
    hash $remote_addr consistent;
${servers}
  }
  server {
    listen 127.0.0.1:${this.port};
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
    }
  }
}
`;
    writeFileSync(join(d, 'nginx.conf'), conf);
    this.child = start(process.env.NGINX ?? 'nginx', ['-p', d, '-c', join(d, 'nginx.conf')]);
    this.host = `127.0.0.1:${this.port}`;
    this.url = `http://${this.host}`;
    await waitFor(
      () =>
        fetch(`${this.url}/healthz`)
          .then((r) => r.ok)
          .catch(() => {
            if (this.child.exitCode !== null) throw new Error(`nginx exited: ${this.child.stderrText}`);
            return false;
          }),
      'nginx listening',
      15000,
    );
    return this;
  }
  async stop() {
    await stop(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The front the tests run through: FRONT=nginx, else wsgate. */
export const FRONT = process.env.FRONT === 'nginx' ? 'nginx' : 'wsgate';

export function startFront(ports) {
  return FRONT === 'nginx' ? new Nginx(ports).start() : new Gateway(ports).start();
}
