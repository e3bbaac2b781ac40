// wsgate-client: a dependency-free reconnecting WebSocket client for wsgate.
//
// The rules it follows (backoff, close codes, heartbeat, queue, backpressure,
// tokens, states, tabs) are written once in ../README.md, which the Rust client
// follows too. Comments here say why; the README says what.

/** Defaults. Every number is in milliseconds or bytes. */
export const DEFAULTS = Object.freeze({
  base: 1000, // first retry waits 0.5-1.5 s
  cap: 30000, // at the cap a client waits 15-45 s
  resetAfter: 5000, // a link that stays open this long resets the backoff
  maxRetries: 10, // failed retries in a row before giving up
  connectTimeout: 10000, // token provider + handshake must finish within this
  heartbeatInterval: 30000, // ping after this much silence from the server
  heartbeatTimeout: 10000, // no message this long after a ping: the link is dead
  ping: '{"type":"ping"}', // wsgate's [heartbeat] app_ping example
  pong: '{"type":"pong"}', // ... and its app_pong, consumed here
  maxQueuedMessages: 1000,
  maxQueuedBytes: 1 << 20,
  overflow: 'reject', // or 'dropOldest'
  highWaterMark: 256 << 10, // stop draining the queue above this bufferedAmount
  lowWaterMark: 64 << 10, // ... and resume below this one
  drainInterval: 50, // browsers have no drain event, so poll bufferedAmount
  tokenIn: 'query', // or 'first_message'
  tokenParam: 'token', // wsgate's default token_from includes "query:token"
  binaryType: 'arraybuffer', // clones through BroadcastChannel, unlike nothing else
  resume: false, // ask wsgate for a resumable session ([resume] enabled on the gateway)
});

/** The subprotocol that asks wsgate for a resumable session (clients/README.md, rule 11). */
export const RESUME_SUBPROTOCOL = 'wsgate.resume.v1';
/** Acknowledge after this many received messages, or after RESUME_ACK_DELAY. */
const RESUME_ACK_EVERY = 32;
const RESUME_ACK_DELAY = 100;
/** The gateway sends its hello at once; without one by then, the link is plain. */
const RESUME_HELLO_TIMEOUT = 5000;

/** An app text that starts with NUL gets one more: NUL-led texts are session control. */
function escapeResume(data) {
  return typeof data === 'string' && data.charCodeAt(0) === 0 ? '\0' + data : data;
}

/**
 * The session state that outlives links (what this client sent and the gateway
 * has not acknowledged, what it received, the credential for the next link).
 */
class ResumeSession {
  constructor() {
    this.reset();
    this.credential = null;
  }
  reset() {
    this.received = 0; // data messages received in this session
    this.ackSent = 0; // the last count acknowledged to the gateway
    this.acked = 0; // ours the gateway acknowledged
    this.unacked = []; // sent, not yet acknowledged: number acked + 1 on
  }
  /** Subprotocols to offer for the next link. */
  offer() {
    return this.credential ? [RESUME_SUBPROTOCOL, `${RESUME_SUBPROTOCOL}.${this.credential}.${this.received}`] : [RESUME_SUBPROTOCOL];
  }
  ack(n) {
    while (this.acked < n && this.unacked.length) {
      this.unacked.shift();
      this.acked++;
    }
  }
  /**
   * The gateway's hello. Returns {replay: [...]} or {lost: reason} or {}.
   * @param {string} text
   */
  hello(text) {
    const [credential, n, state = ''] = text.slice('\0hello '.length).split(' ');
    const received = Number(n);
    const had = this.credential !== null;
    this.credential = credential;
    const sent = this.acked + this.unacked.length;
    if (state === 'resumed' && had && received >= this.acked && received <= sent) {
      this.ack(received);
      this.ackSent = this.received;
      return { replay: [...this.unacked] };
    }
    this.reset();
    if (state === 'new' && !had) return {};
    if (state === 'resumed') return { lost: 'count mismatch' };
    return { lost: state.startsWith('lost:') ? state.slice(5) : state };
  }
}

/** Local pseudo close codes: never sent by a server, so the policy cannot confuse them. */
export const LOCAL_CLOSE = Object.freeze({ heartbeat: 4000, connectTimeout: 4000 });

/**
 * Capped exponential backoff with the jitter applied after the cap, so that
 * clients at the cap still spread out (15-45 s at a 30 s cap). The long backoff
 * (the peer asked for less) never goes under half the cap.
 * @param {number} attempt 0 for the first retry
 * @param {number} base
 * @param {number} cap
 * @param {() => number} [random] a fresh draw in [0, 1) for every call
 * @param {boolean} [long]
 */
export function backoffDelay(attempt, base, cap, random = Math.random, long = false) {
  const raw = Math.min(cap, Math.max(long ? cap / 2 : 0, base * 2 ** attempt));
  return raw * (0.5 + random());
}

/**
 * What the close-code policy says to do after a close the server (or the
 * browser) reported. Pure, so the table in the README can be tested directly.
 * @param {number} code
 * @param {string} [reason]
 * @returns {'none'|'stop'|'refresh'|'long'|'normal'|'app'}
 */
export function closeAction(code, reason = '') {
  if (code === 1000) return 'none';
  // Retrying would repeat the same bug; 1003 and 1010 are the same kind.
  if (code === 1002 || code === 1003 || code === 1007 || code === 1009 || code === 1010) return 'stop';
  if (code === 4001) return reason.trim().toLowerCase() === 'token expired' ? 'refresh' : 'stop';
  if (code === 4008) return 'stop';
  if (code === 1008 || code === 1013 || code === 4029) return 'long'; // the peer asked for less
  if (code >= 4000 && code <= 4999) return 'app';
  return 'normal'; // 1001, 1005, 1006, 1011, 1012, 1014 and anything unknown
}

/** A terminal failure, delivered with the `error` event. */
export class WsgateError extends Error {
  /**
   * @param {'close'|'auth'|'max_retries'|'url'} kind
   * @param {string} message
   * @param {{code?: number, reason?: string}} [info]
   */
  constructor(kind, message, info = {}) {
    super(message);
    this.name = 'WsgateError';
    this.kind = kind;
    this.code = info.code ?? 0;
    this.reason = info.reason ?? '';
  }
}

/** The events WsgateClient dispatches: plain Events with their fields copied on. */
export class WsgateEvent extends Event {
  constructor(type, fields = {}) {
    super(type);
    Object.assign(this, fields);
  }
}

const encoder = new TextEncoder();

/** Bytes a message occupies on the wire (strings are UTF-8). */
function byteSize(data) {
  if (typeof data === 'string') return encoder.encode(data).length;
  return data.byteLength ?? data.size ?? 0; // ArrayBuffer, views, Blob
}

/** FIFO bounded by count and bytes; the overflow policy lives here. */
class BoundedQueue {
  constructor(o) {
    this.o = o;
    this.items = [];
    this.bytes = 0;
  }
  /** @returns {{ok: boolean, dropped: any[]}} */
  push(data) {
    const size = byteSize(data);
    const dropped = [];
    if (size > this.o.maxQueuedBytes) return { ok: false, dropped }; // can never fit
    while (this.items.length >= this.o.maxQueuedMessages || this.bytes + size > this.o.maxQueuedBytes) {
      if (this.o.overflow !== 'dropOldest') return { ok: false, dropped };
      dropped.push(this.shift());
    }
    this.items.push({ data, size });
    this.bytes += size;
    return { ok: true, dropped };
  }
  shift() {
    const item = this.items.shift();
    this.bytes -= item.size;
    return item.data;
  }
  clear() {
    const n = this.items.length;
    this.items = [];
    this.bytes = 0;
    return n;
  }
}

function resolveOptions(url, options) {
  const o = { ...DEFAULTS, ...options, url };
  const c = options.clock ?? {};
  // Bound, because platform timers called detached throw "Illegal invocation".
  o.clock = {
    setTimeout: c.setTimeout?.bind(c) ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
    clearTimeout: c.clearTimeout?.bind(c) ?? ((id) => globalThis.clearTimeout(id)),
    now: c.now?.bind(c) ?? (() => Date.now()),
    random: c.random?.bind(c) ?? Math.random,
  };
  o.WebSocket = options.WebSocket ?? globalThis.WebSocket;
  return o;
}

/**
 * One logical connection: a socket that is replaced by a new one according to
 * the policy. Knows nothing of tabs; WsgateClient wraps it.
 */
class Core {
  /** @param {(type: string, fields?: object) => void} emit */
  constructor(o, emit) {
    this.o = o;
    this.emit = emit;
    this.clock = o.clock;
    this.queue = new BoundedQueue(o);
    this.state = 'connecting';
    this.ws = null;
    this.gen = 0; // bumped per attempt; stale callbacks compare and bail out
    this.failures = 0; // consecutive failed attempts since the last stable link
    this.authRetried = false; // the single "token expired" refresh was used
    this.refused = new Set(); // tokens the server refused: never sent again
    this.token = undefined;
    this.lastClose = { code: 0, reason: '' };
    this.timers = {};
    this.paused = false; // backpressure hysteresis
    this.session = o.resume ? new ResumeSession() : null;
    this.awaitingHello = false; // resume: nothing is written before the hello
    this.resumable = false; // this link carries the resume protocol
  }

  /** Subprotocols to offer: the app's, then the resume offer. */
  protocols() {
    const app = this.o.protocols === undefined ? [] : [].concat(this.o.protocols);
    return this.session ? [...app, ...this.session.offer()] : this.o.protocols;
  }

  /** Writes an app message; on a resumable link it is kept until acknowledged. */
  write(ws, data) {
    if (this.resumable) {
      this.session.unacked.push(data);
      ws.send(escapeResume(data));
    } else ws.send(data);
  }

  /** A hello or (without one in time) a plain link: writing may start. */
  onHello(ws, text) {
    this.clearTimer('hello');
    this.awaitingHello = false;
    if (text === undefined) return this.drain();
    this.resumable = true;
    const r = this.session.hello(text);
    if (r.lost !== undefined) this.emit('statelost', { reason: r.lost });
    for (const d of r.replay ?? []) ws.send(escapeResume(d));
    this.drain();
  }

  /** Counts a received message and acknowledges in batches. */
  received() {
    const s = this.session;
    s.received++;
    if (s.received - s.ackSent >= RESUME_ACK_EVERY) this.sendAck();
    else if (!('ack' in this.timers)) this.setTimer('ack', () => this.sendAck(), RESUME_ACK_DELAY);
  }

  sendAck() {
    this.clearTimer('ack');
    const s = this.session;
    if (!this.ws || s.ackSent === s.received) return;
    s.ackSent = s.received;
    this.ws.send(`\0ack ${s.received}`);
  }

  setTimer(name, fn, ms) {
    this.clearTimer(name);
    this.timers[name] = this.clock.setTimeout(() => {
      delete this.timers[name];
      fn();
    }, ms);
  }
  clearTimer(name) {
    if (name in this.timers) this.clock.clearTimeout(this.timers[name]);
    delete this.timers[name];
  }
  clearTimers() {
    for (const name of Object.keys(this.timers)) this.clearTimer(name);
  }

  setState(state, fields = {}) {
    const previous = this.state;
    this.state = state;
    this.emit('statechange', { state, previous, attempt: this.failures, delay: 0, ...this.lastClose, ...fields });
  }

  start() {
    this.connect();
  }

  async connect() {
    const gen = ++this.gen;
    const o = this.o;
    this.setState('connecting');
    // The watchdog covers the token provider too: a hung provider or a server
    // that accepts TCP but never answers the upgrade must not stall us forever.
    this.setTimer('connect', () => this.ended(gen, { code: LOCAL_CLOSE.connectTimeout, reason: 'connect timeout', local: true }), o.connectTimeout);
    let token;
    if (o.token) {
      try {
        token = await o.token({ attempt: this.failures, refused: [...this.refused], ...this.lastClose });
      } catch (e) {
        if (gen === this.gen) this.ended(gen, { code: 1006, reason: `token provider failed: ${e?.message ?? e}`, local: true });
        return;
      }
      if (gen !== this.gen) return; // closed or timed out meanwhile
      if (this.refused.has(token)) {
        return this.stop(new WsgateError('auth', 'the token provider returned a token the server already refused', this.lastClose));
      }
    }
    this.token = token;
    let ws;
    try {
      ws = new o.WebSocket(this.url(token), this.protocols());
    } catch (e) {
      // A bad URL throws synchronously; it will not get better by retrying.
      return this.stop(new WsgateError('url', `cannot open ${o.url}: ${e?.message ?? e}`));
    }
    this.ws = ws;
    this.resumable = false;
    this.awaitingHello = !!this.session;
    ws.binaryType = o.binaryType;
    ws.onopen = () => {
      if (gen !== this.gen) return;
      this.clearTimer('connect');
      if (o.tokenIn === 'first_message' && token != null) ws.send(String(token));
      // Only a link that stays up resets the backoff, so a server that accepts
      // and drops at once cannot pull clients into a tight loop.
      this.setTimer('stable', () => {
        this.failures = 0;
        this.authRetried = false;
      }, o.resetAfter);
      this.lastClose = { code: 0, reason: '' };
      this.setState('open');
      this.emit('open', {});
      this.armPing();
      if (this.awaitingHello) this.setTimer('hello', () => this.onHello(ws), RESUME_HELLO_TIMEOUT);
      else this.drain();
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen) return;
      this.clearTimer('deadline');
      this.armPing();
      let data = ev.data;
      if (this.awaitingHello) {
        if (typeof data === 'string' && data.startsWith('\0hello ')) return this.onHello(ws, data);
        this.onHello(ws); // the first message is data: a plain link
      }
      if (this.resumable) {
        if (typeof data === 'string' && data.charCodeAt(0) === 0) {
          if (data.charCodeAt(1) !== 0) {
            if (data.startsWith('\0ack ')) this.session.ack(Number(data.slice(5)));
            return; // session control (\0pong, ...) never reaches the app
          }
          data = data.slice(1);
        }
        this.received();
      } else if (typeof data === 'string' && data === o.pong) return; // our heartbeat answer
      this.emit('message', { data });
    };
    ws.onclose = (ev) => {
      if (gen !== this.gen) return;
      this.ended(gen, { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, local: false });
    };
    ws.onerror = () => {}; // a close event always follows; it carries what we need
  }

  url(token) {
    const url = typeof this.o.url === 'function' ? this.o.url() : this.o.url;
    if (token == null || this.o.tokenIn !== 'query') return url;
    const u = new URL(url, globalThis.location?.href);
    u.searchParams.set(this.o.tokenParam, token);
    return u.href;
  }

  /** Forget the current socket: its late events must not reach us. */
  detach(closeCode, closeReason) {
    const ws = this.ws;
    this.ws = null;
    this.gen++;
    this.clearTimers();
    this.paused = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (closeCode !== undefined && ws.readyState < 2) {
      try {
        ws.close(closeCode, closeReason);
      } catch {
        /* already closing */
      }
    }
  }

  /** One socket ended (or never opened): decide what the policy says. */
  ended(gen, info) {
    if (gen !== this.gen) return;
    this.detach(info.local ? info.code : undefined, info.reason);
    const { code, reason = '' } = info;
    this.lastClose = { code, reason };
    let action = info.local ? 'normal' : closeAction(code, reason);
    if (action === 'app') action = this.o.onAppClose?.(code, reason) ?? 'stop';
    this.emit('close', { code, reason, wasClean: !!info.wasClean, local: !!info.local, action });
    if (code === 4001 && this.token != null) this.refused.add(this.token);
    switch (action) {
      case 'none':
        return this.setState('closed');
      case 'refresh':
        if (this.authRetried) return this.stop(new WsgateError('auth', `authentication failed again: ${reason}`, info));
        this.authRetried = true;
        this.failures++; // counted, so that the UI sees a reconnect attempt
        this.setState('reconnecting', { delay: 0 });
        return this.connect(); // at once: the token simply ran out
      case 'normal':
      case 'long': {
        this.failures++;
        if (this.failures > this.o.maxRetries) {
          return this.stop(new WsgateError('max_retries', `gave up after ${this.o.maxRetries} retries (last close ${code} ${reason})`.trim(), info));
        }
        const delay = backoffDelay(this.failures - 1, this.o.base, this.o.cap, this.clock.random, action === 'long');
        this.setState('reconnecting', { delay });
        this.setTimer('retry', () => this.connect(), delay);
        return;
      }
      default: // 'stop'
        return this.stop(new WsgateError(code === 4001 || code === 4008 ? 'auth' : 'close', `closed with ${code} ${reason}`.trim(), info));
    }
  }

  /**
   * The app closed or asked for a new link, so it knows the session is over. (A
   * close from the server keeps the credential: the next hello says the state is
   * lost, and the app hears so.)
   */
  forgetSession() {
    if (this.session) this.session = new ResumeSession();
  }

  stop(error) {
    this.detach(1000, '');
    this.setState('closed');
    this.emit('error', { error });
  }

  /** App close: no reconnect. The queue is kept so that reconnect() can flush it. */
  close(code = 1000, reason = '') {
    this.detach(code, reason);
    this.forgetSession();
    this.lastClose = { code, reason };
    if (this.state !== 'closed') this.setState('closed');
  }

  /** Connect now: restarts a stopped client, or replaces a live socket. */
  reconnect() {
    this.detach(1000, 'reconnect');
    this.forgetSession();
    this.failures = 0;
    this.authRetried = false;
    this.connect();
  }

  // --- heartbeat ---------------------------------------------------------

  /** Ping only after silence: any message proves the link, so busy links cost nothing. */
  armPing() {
    if (!(this.o.heartbeatInterval > 0)) return;
    this.setTimer('ping', () => this.ping(), this.o.heartbeatInterval);
  }

  ping() {
    const ws = this.ws;
    if (!ws || this.state !== 'open') return;
    // On a resumable link an app ping would be numbered data: \0ping is control.
    ws.send(this.resumable ? '\0ping' : this.o.ping);
    const gen = this.gen;
    const sentBuffered = ws.bufferedAmount;
    const check = () => {
      // Our own upload may sit in front of the ping; while it still drains the
      // link is alive, so wait for it instead of killing a slow but live link.
      if (this.ws === ws && ws.bufferedAmount > 0 && ws.bufferedAmount < sentBuffered) {
        return this.setTimer('deadline', check, this.o.heartbeatTimeout);
      }
      this.ended(gen, { code: LOCAL_CLOSE.heartbeat, reason: 'heartbeat timeout', local: true });
    };
    this.setTimer('deadline', check, this.o.heartbeatTimeout);
  }

  // --- queue and backpressure ---------------------------------------------

  send(data) {
    if (this.state === 'closed') return false;
    const ws = this.ws;
    // The app may call send() from a close handler, after the socket is gone.
    if (ws && this.state === 'open' && !this.awaitingHello && this.queue.items.length === 0 && !this.paused && ws.bufferedAmount <= this.o.highWaterMark) {
      this.write(ws, data);
      return true;
    }
    const { ok, dropped } = this.queue.push(data);
    for (const d of dropped) this.emit('drop', { data: d, reason: 'dropOldest' });
    if (ok && this.state === 'open' && !('drain' in this.timers)) this.drain();
    return ok;
  }

  /** Flush in order while the socket's own buffer stays under the high-water mark. */
  drain() {
    const ws = this.ws;
    if (!ws || this.state !== 'open' || this.awaitingHello) return;
    if (this.paused && ws.bufferedAmount > this.o.lowWaterMark) {
      return this.setTimer('drain', () => this.drain(), this.o.drainInterval);
    }
    this.paused = false;
    while (this.queue.items.length && ws.bufferedAmount <= this.o.highWaterMark) this.write(ws, this.queue.shift());
    if (this.queue.items.length) {
      this.paused = true;
      this.setTimer('drain', () => this.drain(), this.o.drainInterval);
    }
  }
}

/**
 * A reconnecting WebSocket that follows wsgate's client rules.
 *
 * Events: `open`, `message` ({data}), `close` ({code, reason, wasClean, local,
 * action}), `statechange` ({state, previous, attempt, delay, code, reason}),
 * `error` ({error: WsgateError}, terminal), `drop` ({data, reason}),
 * `leaderchange` ({leader}) with shareAcrossTabs, `statelost` ({reason}) with
 * resume: the session could not be resumed, resynchronise.
 */
export class WsgateClient extends EventTarget {
  #o;
  #core = null;
  #tab = null;
  #state = 'connecting';

  /**
   * @param {string | (() => string)} url ws:// or wss:// URL of the gateway
   * @param {object} [options] see wsgate-client.d.ts
   */
  constructor(url, options = {}) {
    super();
    this.#o = resolveOptions(url, options);
    const canShare = typeof BroadcastChannel === 'function' && globalThis.navigator?.locks;
    if (this.#o.shareAcrossTabs && canShare) this.#tab = new TabShare(this, this.#o);
    else this._lead();
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }
  /** The underlying socket's bufferedAmount (0 when none, or in a follower tab). */
  get bufferedAmount() {
    return this.#core?.ws?.bufferedAmount ?? 0;
  }
  /** Whether this tab owns the socket (always true without shareAcrossTabs). */
  get isLeader() {
    return this.#core !== null;
  }

  /**
   * Send now if open and not held back, else queue.
   * @returns {boolean} false if the queue refused it (full, or client closed)
   */
  send(data) {
    if (this.#core) return this.#core.send(data);
    return this.#tab ? this.#tab.send(data) : false;
  }
  /** Number of messages waiting to be sent (in this tab). */
  queued() {
    return this.#core ? this.#core.queue.items.length : (this.#tab?.pending.items.length ?? 0);
  }
  /** Bytes waiting to be sent (in this tab). */
  queuedBytes() {
    return this.#core ? this.#core.queue.bytes : (this.#tab?.pending.bytes ?? 0);
  }
  /** Drop every queued message; returns how many were dropped. */
  clearQueue() {
    return this.#core ? this.#core.queue.clear() : (this.#tab?.clear() ?? 0);
  }
  /** Close for good (no reconnect). With shareAcrossTabs: this tab leaves; another tab takes over. */
  close(code = 1000, reason = '') {
    if (this.#tab) this.#tab.leave(code, reason);
    else this.#core?.close(code, reason);
    this.#setState('closed', { previous: this.#state, attempt: 0, delay: 0, code, reason });
  }
  /** Connect at once with a fresh backoff, also after a terminal error. A tab that left a shared socket stays out. */
  reconnect() {
    if (this.#tab?.left) return;
    if (this.#core) this.#core.reconnect();
    else this.#tab?.post({ t: 'reconnect' });
  }

  // --- internals shared with TabShare ---

  /** @internal Become the owner of the socket. */
  _lead() {
    this.#core = new Core(this.#o, (type, fields) => {
      this.#tab?.relay(type, fields);
      this._dispatch(type, fields);
    });
    this.#core.start();
    return this.#core;
  }
  /** @internal */
  _core() {
    return this.#core;
  }
  #setState(state, fields) {
    if (state === this.#state) return;
    this.#state = state;
    this.dispatchEvent(new WsgateEvent('statechange', { ...fields, state }));
  }
  /** @internal */
  _dispatch(type, fields = {}) {
    if (this.#state === 'closed' && this.#tab?.left) return; // this tab left
    if (type === 'statechange') return this.#setState(fields.state, fields);
    this.dispatchEvent(new WsgateEvent(type, fields));
  }
}

/**
 * Multi-tab sharing: the tab holding a Web Lock owns the socket; the others
 * talk to it over a BroadcastChannel. A lock is released by the browser when
 * its tab dies, which is exactly the failover signal a heartbeat would only
 * approximate.
 */
class TabShare {
  constructor(client, o) {
    this.client = client;
    this.o = o;
    this.name = o.shareName ?? `wsgate:${typeof o.url === 'function' ? o.url() : o.url}`;
    this.id = Math.random().toString(36).slice(2);
    this.seq = 0;
    this.pending = new BoundedQueue(o); // follower sends not yet acknowledged by a leader
    this.pendingIds = [];
    this.left = false;
    this.abort = new AbortController();
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (ev) => this.onMessage(ev.data);
    this.post({ t: 'hello' }); // a live leader answers with its state
    navigator.locks
      .request(this.name, { signal: this.abort.signal }, () => this.becomeLeader())
      .catch(() => {}); // AbortError after leave()
  }

  post(msg) {
    if (!this.left) this.channel.postMessage({ ...msg, from: this.id });
  }

  /** Called with the lock held; the returned promise holds it until leave(). */
  becomeLeader() {
    if (this.left) return;
    const core = this.client._lead();
    // Our own unacknowledged sends go first, in order, into the real queue.
    while (this.pending.items.length) core.send(this.pending.shift());
    this.pendingIds = [];
    this.post({ t: 'leader' });
    this.client._dispatch('leaderchange', { leader: true });
    return new Promise((resolve) => (this.release = resolve));
  }

  /** Leader: forward its events to the followers (errors as plain fields: clones drop subclasses). */
  relay(type, fields) {
    if (type === 'drop') return; // only the tab that sent it cares, and that is us
    const f = type === 'error' ? { error: { ...fields.error, message: fields.error.message } } : fields;
    this.post({ t: 'event', type, fields: f });
  }

  onMessage(m) {
    const core = this.client._core();
    if (core) {
      // Leader side.
      if (m.t === 'send') {
        const ok = core.send(m.data);
        this.post({ t: 'ack', to: m.from, id: m.id, ok });
      } else if (m.t === 'hello') {
        this.post({ t: 'event', to: m.from, type: 'statechange', fields: { state: core.state, previous: core.state, attempt: core.failures, delay: 0, ...core.lastClose } });
        if (core.state === 'open') this.post({ t: 'event', to: m.from, type: 'open', fields: {} });
      } else if (m.t === 'reconnect') core.reconnect();
      return;
    }
    // Follower side.
    if (m.to && m.to !== this.id) return;
    if (m.t === 'event') {
      const fields = m.type === 'error' ? { error: Object.assign(new WsgateError(m.fields.error.kind, m.fields.error.message), m.fields.error) } : m.fields;
      this.client._dispatch(m.type, fields);
    } else if (m.t === 'ack') {
      const i = this.pendingIds.indexOf(m.id);
      if (i < 0) return;
      // Acks arrive in order, so everything before this one was acknowledged too.
      const acked = this.pendingIds.splice(0, i + 1).length;
      for (let k = 0; k < acked; k++) {
        const data = this.pending.shift();
        if (k === acked - 1 && !m.ok) this.client._dispatch('drop', { data, reason: 'rejected by the leader' });
      }
    } else if (m.t === 'bye') {
      // The leader left on purpose; the lock tells who follows. Until then we wait.
      this.client._dispatch('statechange', { state: 'connecting', previous: this.client.state, attempt: 0, delay: 0, code: 0, reason: 'leader left' });
    } else if (m.t === 'leader') {
      this.client._dispatch('leaderchange', { leader: false });
      // A new leader: whatever the old one never acknowledged is sent again.
      for (let i = 0; i < this.pendingIds.length; i++) this.post({ t: 'send', id: this.pendingIds[i], data: this.pending.items[i].data });
    }
  }

  send(data) {
    if (this.left) return false;
    const { ok, dropped } = this.pending.push(data);
    for (const d of dropped) {
      this.pendingIds.shift();
      this.client._dispatch('drop', { data: d, reason: 'dropOldest' });
    }
    if (!ok) return false;
    const id = ++this.seq;
    this.pendingIds.push(id);
    this.post({ t: 'send', id, data });
    return true;
  }

  clear() {
    this.pendingIds = [];
    return this.pending.clear();
  }

  leave(code, reason) {
    if (this.left) return;
    this.post({ t: 'bye' });
    this.left = true; // from here on nothing is relayed: the others must not see our 'closed'
    this.client._core()?.close(code, reason);
    this.abort.abort();
    this.release?.(); // frees the lock: the next tab in line becomes leader
    this.channel.close();
  }
}
