// Type declarations for wsgate-client.js. The rules are in clients/README.md.

/** `connecting`: an attempt is under way (token, handshake). `open`: connected.
 * `reconnecting`: waiting `delay` ms before the next attempt. `closed`: stopped
 * (by `close()`, a 1000 from the server, or a terminal error). */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** What the close-code policy does after a close. */
export type CloseAction = 'none' | 'stop' | 'refresh' | 'long' | 'normal' | 'app';

/** The app's answer for a 4000-4999 code the policy does not know. */
export type AppCloseDecision = 'stop' | 'normal' | 'long' | 'none';

/** Anything WebSocket.send accepts. */
export type Data = string | ArrayBuffer | ArrayBufferView | Blob;

/** Time and randomness, injectable so tests can run minutes of backoff in milliseconds. */
export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
  /** Milliseconds, monotonic enough for durations. */
  now(): number;
  /** Uniform in [0, 1); called once per reconnect attempt. */
  random(): number;
}

/** What the token provider is told about the attempt it supplies a token for. */
export interface TokenContext {
  /** Consecutive failed attempts so far (0 for the first attempt after a reset). */
  attempt: number;
  /** Tokens the server refused (4001); the client will not send any of them again. */
  refused: string[];
  /** The last close code (0 if none), e.g. 4001 when the token expired. */
  code: number;
  /** The last close reason. */
  reason: string;
}

export interface WsgateClientOptions {
  /** Backoff base in ms (default 1000). */
  base?: number;
  /** Backoff cap in ms before jitter (default 30000): the wait at the cap is 15-45 s. */
  cap?: number;
  /** A connection open this long (ms) resets the backoff and the token refresh (default 5000). */
  resetAfter?: number;
  /** Failed reconnect attempts in a row before stopping with an `error` (default 10; Infinity = never). */
  maxRetries?: number;
  /** Watchdog over token provider + handshake, ms (default 10000). */
  connectTimeout?: number;
  /** Ping after this much silence from the server, ms (default 30000; 0 = no heartbeat). */
  heartbeatInterval?: number;
  /** No message this long after a ping (ms) means the link is dead (default 10000). */
  heartbeatTimeout?: number;
  /** Heartbeat text (default `{"type":"ping"}`, wsgate's `app_ping` example). */
  ping?: string;
  /** The answer, consumed and not delivered (default `{"type":"pong"}`). */
  pong?: string;
  /** Queue bound while not open: messages (default 1000). */
  maxQueuedMessages?: number;
  /** Queue bound while not open: bytes, strings counted as UTF-8 (default 1 MiB). */
  maxQueuedBytes?: number;
  /** When the queue is full: `reject` (send returns false, default) or `dropOldest` (a `drop` event each). */
  overflow?: 'reject' | 'dropOldest';
  /** Stop draining the queue while bufferedAmount is above this (default 256 KiB). */
  highWaterMark?: number;
  /** Resume draining once bufferedAmount is at or below this (default 64 KiB). */
  lowWaterMark?: number;
  /** How often bufferedAmount is polled while held back, ms (default 50). */
  drainInterval?: number;
  /** Called before every attempt; the token goes where `tokenIn` says. */
  token?: (ctx: TokenContext) => string | Promise<string>;
  /** `query` (default: `?token=...`, wsgate's `query:token`) or `first_message` (the first text message). */
  tokenIn?: 'query' | 'first_message';
  /** Query parameter name for `tokenIn: 'query'` (default `token`). */
  tokenParam?: string;
  /** Subprotocols offered in the handshake. */
  protocols?: string | string[];
  /** Default `arraybuffer` (it crosses tabs; Blob does too). */
  binaryType?: BinaryType;
  /** Decides other 4000-4999 codes; default (or `undefined` returned): stop. */
  onAppClose?: (code: number, reason: string) => AppCloseDecision | undefined;
  /** Injected time and randomness (tests). */
  clock?: Partial<Clock>;
  /** WebSocket constructor (default globalThis.WebSocket; e.g. `ws` in Node). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Share one socket between the tabs of this origin (Web Locks + BroadcastChannel). */
  shareAcrossTabs?: boolean;
  /** Lock and channel name for shareAcrossTabs (default `wsgate:` + the URL). */
  shareName?: string;
  /**
   * Ask wsgate for a resumable session (`[resume] enabled` on the gateway; default
   * false): a link lost without a close frame is resumed, and both sides replay what
   * the other missed, so every message arrives exactly once and in order. When that is
   * impossible, `statelost` fires once and a fresh session goes on. clients/README.md,
   * rule 11.
   */
  resume?: boolean;
}

/** The subprotocol that asks wsgate for a resumable session. */
export const RESUME_SUBPROTOCOL: 'wsgate.resume.v1';

/** A terminal failure, carried by the `error` event. */
export class WsgateError extends Error {
  /** `close`: a close code that stops; `auth`: credentials refused; `max_retries`; `url`: the URL is invalid. */
  readonly kind: 'close' | 'auth' | 'max_retries' | 'url';
  /** The last close code (0 if none). */
  readonly code: number;
  /** The last close reason, as the server sent it. */
  readonly reason: string;
  constructor(kind: WsgateError['kind'], message: string, info?: { code?: number; reason?: string });
}

export interface StateChangeEvent extends Event {
  readonly state: State;
  readonly previous: State;
  /** Reconnect attempts since the last reset; with `reconnecting`, the number of the attempt that comes next. */
  readonly attempt: number;
  /** With `reconnecting`: ms until the next attempt ("reconnecting in 4 s"); else 0. */
  readonly delay: number;
  /** The close that led here (0 if none). */
  readonly code: number;
  readonly reason: string;
}

export interface CloseInfoEvent extends Event {
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
  /** True for closes the client decided itself: code 4000 "heartbeat timeout" or "connect timeout". */
  readonly local: boolean;
  /** What the policy does about it. */
  readonly action: CloseAction | AppCloseDecision;
}

export interface DataEvent extends Event {
  readonly data: any;
}
export interface DropEvent extends Event {
  readonly data: Data;
  readonly reason: string;
}
export interface ErrorEvent_ extends Event {
  readonly error: WsgateError;
}
export interface LeaderChangeEvent extends Event {
  readonly leader: boolean;
}
/** With `resume`: the session could not be resumed; messages in flight either way may be lost. */
export interface StateLostEvent extends Event {
  /** `expired`, `overflow`, `unknown`, `refused` or `count mismatch`. */
  readonly reason: string;
}

export interface WsgateClientEventMap {
  open: Event;
  message: DataEvent;
  close: CloseInfoEvent;
  statechange: StateChangeEvent;
  error: ErrorEvent_;
  drop: DropEvent;
  leaderchange: LeaderChangeEvent;
  statelost: StateLostEvent;
}

export class WsgateClient extends EventTarget {
  /** Starts connecting at once. */
  constructor(url: string | (() => string), options?: WsgateClientOptions);
  readonly state: State;
  /** The socket's bufferedAmount (0 without a socket or in a follower tab). */
  readonly bufferedAmount: number;
  /** Whether this tab owns the socket (always true without shareAcrossTabs). */
  readonly isLeader: boolean;
  /** Sends now, or queues while not open / held back. False if refused (queue full, or closed). */
  send(data: Data): boolean;
  /** Messages waiting in this tab. */
  queued(): number;
  /** Bytes waiting in this tab. */
  queuedBytes(): number;
  /** Drops what is queued; returns how many. */
  clearQueue(): number;
  /** Closes for good. With shareAcrossTabs, this tab leaves and another takes the socket over. */
  close(code?: number, reason?: string): void;
  /** Connects at once with a fresh backoff, also after a terminal error (not in a tab that left a shared socket). */
  reconnect(): void;

  addEventListener<K extends keyof WsgateClientEventMap>(
    type: K,
    listener: (ev: WsgateClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof WsgateClientEventMap>(
    type: K,
    listener: (ev: WsgateClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/** The event class the client dispatches: an Event with its fields copied on. */
export class WsgateEvent extends Event {
  constructor(type: string, fields?: object);
}

/** `min(cap, base * 2^attempt) * (0.5 + random())`; with `long`, never under `cap / 2` before jitter. */
export function backoffDelay(attempt: number, base: number, cap: number, random?: () => number, long?: boolean): number;

/** The close-code policy (README table) as a pure function. */
export function closeAction(code: number, reason?: string): CloseAction;

export const DEFAULTS: Readonly<Required<Pick<WsgateClientOptions,
  'base' | 'cap' | 'resetAfter' | 'maxRetries' | 'connectTimeout' | 'heartbeatInterval' | 'heartbeatTimeout' |
  'ping' | 'pong' | 'maxQueuedMessages' | 'maxQueuedBytes' | 'overflow' | 'highWaterMark' | 'lowWaterMark' |
  'drainInterval' | 'tokenIn' | 'tokenParam' | 'binaryType'>>>;

/** Codes of the closes the client decides itself (never sent by a server to mean this). */
export const LOCAL_CLOSE: Readonly<{ heartbeat: 4000; connectTimeout: 4000 }>;
