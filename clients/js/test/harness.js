// Processes for the browser tests: a static file server for the pages, the Node
// echo backend, the real wsgate gateway in front of it, and headless Chromium.
// Every wait here is bounded; every process started here is ended by its PID.
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const pkgRoot = join(here, '..'); // clients/js: served as the web root
const repoRoot = join(pkgRoot, '..', '..');

/** Without a gateway (WSGATE_TEST_DIRECT=1) the pages talk to the backend itself. */
export const DIRECT = process.env.WSGATE_TEST_DIRECT === '1';

/** Resolve when `pred(line)` matches a line of the child's stdout, or reject after `ms`. */
function waitLine(child, pred, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
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

/** Stop a child we started: by its PID, waiting (bounded) for it to go. */
async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  try {
    process.kill(child.pid, 'SIGCONT'); // a frozen process cannot die of SIGTERM
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return;
  }
  await Promise.race([gone, sleep(3000)]);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The echo backend, restartable on the same port. */
export class Backend {
  constructor() {
    this.port = 0;
    this.events = []; // parsed stdout lines: {ev: 'conn' | 'close' | 'listening', ...}
    this.child = null;
  }
  async start() {
    const args = [join(here, 'backend.js'), String(this.port)];
    if (DIRECT) args.push('--pong');
    // Reviving on the same port right after a kill: retry briefly if the port is still held.
    for (let i = 0; ; i++) {
      this.child = start(process.execPath, args);
      this.child.lines.on('line', (l) => {
        try {
          this.events.push(JSON.parse(l));
        } catch {
          /* not ours */
        }
      });
      try {
        const ev = await waitLine(this.child, (l) => l.includes('"listening"') && JSON.parse(l), 5000, 'backend listening');
        this.port = ev.port;
        return this;
      } catch (e) {
        if (i >= 10) throw e;
        await sleep(200);
      }
    }
  }
  kill() {
    return stop(this.child);
  }
  pid() {
    return this.child.pid;
  }
  /** Connections the backend saw whose URL starts with `path`. */
  conns(path) {
    return this.events.filter((e) => e.ev === 'conn' && e.url.startsWith(path));
  }
}

/** Path of the wsgate binary: WSGATE_BIN, else target/{debug,release}/wsgate, built if missing. */
export function gatewayBinary() {
  if (process.env.WSGATE_BIN) return process.env.WSGATE_BIN;
  for (const p of ['target/debug/wsgate', 'target/release/wsgate']) if (existsSync(join(repoRoot, p))) return join(repoRoot, p);
  throw new Error('no wsgate binary: run `cargo build -p wsgate` at the repo root (run-tests.sh does), or set WSGATE_TEST_DIRECT=1');
}

/** The real gateway in front of the backend, configured per SPEC. */
export class Gateway {
  /**
   * `port`: the client listener's port (0 = any; a fixed one lets a new process take over).
   * `extra`: more config sections (e.g. `[resume]`), appended.
   */
  constructor(backendPort, port = 0, extra = '') {
    this.backendPort = backendPort;
    this.port = port;
    this.extra = extra;
    this.dir = mkdtempSync(join(tmpdir(), 'wsgate-js-'));
  }
  async start() {
    const config = `
[server]
listen = "127.0.0.1:${this.port}"

[admin]
listen = "127.0.0.1:0"

[health]
# Both checks off: the backend counts as up, so a revived backend is routed to at once.
http_path = ""
ws_path = ""

[heartbeat]
app_ping = '{"type":"ping"}'
app_pong = '{"type":"pong"}'

${this.extra}

[[backends]]
name = "b1"
url = "ws://127.0.0.1:${this.backendPort}"
`;
    const file = join(this.dir, 'wsgate.toml');
    writeFileSync(file, config);
    this.child = start(gatewayBinary(), ['run', '-c', file], { env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
    const m = await waitLine(this.child, (l) => /wsgate listening on (ws:\/\/\S+)/.exec(l), 15000, 'wsgate listening');
    this.url = m[1].replace(/\/$/, '');
    return this;
  }
  pid() {
    return this.child.pid;
  }
  /** Graceful stop (SIGTERM: clients get 1001); resolves with the exit code once it is gone. */
  async terminate(ms = 10000) {
    const child = this.child;
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
    const gone = new Promise((r) => child.once('exit', (code, sig) => r(code ?? sig)));
    process.kill(child.pid, 'SIGTERM');
    const res = await Promise.race([gone, sleep(ms).then(() => 'timeout')]);
    if (res === 'timeout') throw new Error(`wsgate (pid ${child.pid}) did not exit within ${ms} ms of SIGTERM`);
    return res;
  }
  async stop() {
    await stop(this.child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.json': 'application/json' };

/** Serves clients/js on 127.0.0.1 so pages load the module by URL, as an app would. */
export async function startStatic() {
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(pkgRoot, path);
    if (!file.startsWith(pkgRoot) || file.includes('node_modules') || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    try {
      res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' }).end(readFileSync(file));
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** Headless Debian Chromium with a fresh profile; returns its one browser context. */
export async function startBrowser() {
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  const profile = mkdtempSync(join(tmpdir(), 'wsgate-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
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

/** Open the test page and wait for the module to load. */
export async function openPage(context, origin) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${origin}/test/page.html`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}

/** Poll `fn` in the page until it returns truthy; fail with `what` after `ms`. */
export async function until(page, fn, arg, what, ms = 10000) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: ms, polling: 20 });
    return await h.jsonValue();
  } catch (e) {
    const logs = await page.evaluate(() => JSON.stringify(window.logs)).catch(() => '?');
    throw new Error(`timed out waiting for ${what}: ${e.message.split('\n')[0]}\nlogs: ${logs.slice(0, 3000)}`);
  }
}

/** Poll a Node-side predicate; fail with `what` after `ms`. */
export async function waitFor(pred, what, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}
