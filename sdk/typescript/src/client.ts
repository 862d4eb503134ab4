// CourierClient: one WebSocket at a time, replaced whenever it is lost, with
// the promises of docs/protocol.md section 12 kept for the app:
//
//   idle -> connecting -> connected -> (lost) -> reconnecting -> connecting -> ...
//                                   \-> stopped (4003, or a 4001 no refresh fixes) -- setSession --> connecting
//   any state -- close() --> closed
//
// Per channel the client remembers the highest seq it delivered. After every
// (re)connect it rejoins with that `sinceSeq`; the server replays what was
// missed and ends with `recovered`, or answers `recovered: false` (a capped
// replay) and the client pages `fetch_history` forward, holding the channel's
// live pushes meanwhile. Every message is delivered only when its seq is
// above the delivered one, so replays, pages and live pushes never double.
// Sends carry a `clientMsgId` and stay in memory until answered; after a
// reconnect they go again, after the rejoins.

import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from './backoff.js';
import { decodeServer, encodeClient, type Encoding } from './codec.js';
import { CourierError } from './errors.js';
import type {
  AuthSuccess,
  ChannelView,
  ClientFrame,
  HistoryPage,
  Message,
  MessageDeletedData,
  MessageStatusFrame,
  MessageFlaggedFrame,
  PresenceStatus,
  Ref,
  SendResult,
  ServerFrame,
  User,
  UserStatus,
} from './frames.js';
import { jwtExpiry, joinUrl, refreshSession, requestJson, type FetchLike, type Session } from './rest.js';

/** The part of the WebSocket API the client uses (the browser's, Node 20's with --experimental-websocket, or `ws`). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type ClientState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'stopped' | 'closed';

export interface ClientOptions {
  /** REST base, e.g. 'http://127.0.0.1:8080'; the socket is ws(s)://same-host/ws. */
  baseUrl: string;
  /** An explicit WebSocket URL instead of the one derived from baseUrl. */
  url?: string;
  session: Session;
  /** Default 'msgpack' (binary frames); 'json' uses text frames. */
  encoding?: Encoding;
  /**
   * The WebSocket constructor: default globalThis.WebSocket (browsers; Node 20
   * with --experimental-websocket, Node 22+). Anything shaped like
   * WebSocketLike works (e.g. the `ws` package).
   */
  // `any`: the DOM's, undici's and ws's constructors differ in their handler types.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  /** Default globalThis.fetch. */
  fetch?: FetchLike;
  /** How long a call waits for its answer (ms). Default 10000. A send's clock runs only while it is on a socket. */
  requestTimeoutMs?: number;
  /** Reconnect backoff: full jitter in [0, min(maxDelayMs, initialDelayMs · 2^(attempt-1))]. Default 250 ms, 30 s. */
  reconnect?: Partial<BackoffOptions>;
  /** A socket silent for heartbeatMs + this (ms) is dead. Default 5000. */
  heartbeatMarginMs?: number;
  /** The share of the access token's lifetime after which it is refreshed. Default 0.8. */
  refreshAt?: number;
}

/** What 'connected' carries: the authentication_response. */
export type AuthInfo = Pick<AuthSuccess, 'user' | 'sessionId' | 'serverTime' | 'heartbeatMs'>;

export interface SendOptions {
  /** Default crypto.randomUUID(); pass the same one to repeat a send safely. */
  clientMsgId?: string;
  containsPHI?: boolean;
  replyTo?: string;
  ttlSeconds?: number;
  /** Ids of files uploaded to the channel first (`POST /api/channels/{id}/attachments`). */
  attachments?: string[];
  /** The patient the message concerns (`Patient/123`, `system|value`). */
  patientRef?: string;
}

export interface JoinOptions {
  /**
   * Resume from this seq (e.g. one the app stored): what came after it is
   * delivered (replayed or paged) before live messages. Default: only live
   * messages after the join (load older ones with history()).
   */
  sinceSeq?: number;
}

/** Every event, with its handler's arguments. */
export interface ClientEvents {
  connecting: [];
  connected: [auth: AuthInfo];
  disconnected: [code: number, reason: string];
  reconnecting: [attempt: number, delayMs: number];
  stopped: [code: number, reason: string];
  session: [session: Session];
  message: [msg: Message];
  messageUpdated: [msg: Message];
  messageDeleted: [data: MessageDeletedData];
  typing: [data: { channelId: string; userId: string; isTyping: boolean }];
  readReceipt: [data: { channelId: string; userId: string; seq: number }];
  reaction: [data: { channelId: string; messageId: string; reactions: Record<string, number> }];
  presence: [data: { userId: string; status: PresenceStatus; lastSeen: number }];
  system: [data: { eventType: string; data: unknown }];
  notification: [data: { data: unknown }];
  error: [err: CourierError];
  /** (addition) Direct channels: the other member got (`delivered`) or read (`read`) everything up to seq. */
  messageStatus: [data: Omit<MessageStatusFrame, 'type'>];
  /** (addition) Moderators only: a message was flagged (with its reason) or unflagged. */
  messageFlagged: [data: Omit<MessageFlaggedFrame, 'type'>];
  /** (addition) A rejoin's gap is filled: every message up to lastSeq was delivered; paged = filled with fetch_history. */
  recovered: [data: { channelId: string; lastSeq: number; paged: boolean }];
  /** (addition) Every join's answer, the first one and each rejoin after a reconnect: who is online now, lastSeq, unread. */
  joined: [view: ChannelView];
  /** (addition) A remembered channel could not be joined again (e.g. forbidden): it is forgotten. */
  channelLost: [data: { channelId: string; error: CourierError }];
}

export type EventName = keyof ClientEvents;
export type Handler<E extends EventName> = (...args: ClientEvents[E]) => void;

/** One WebSocket and what belongs to it alone. */
interface Socket {
  ws: WebSocketLike;
  /** Set once the socket is no longer the client's (closed, or given up as dead). */
  ended: boolean;
  authenticated: boolean;
  /** The access token last sent on it. */
  token: string;
  /** The ref of the first `authenticate`. */
  authRef: Ref;
  heartbeatMs: number;
  lastFrameAt: number;
  lastPingAt: number;
  pingTimer?: ReturnType<typeof setInterval>;
  deadTimer?: ReturnType<typeof setTimeout>;
  authTimer?: ReturnType<typeof setTimeout>;
  /** The auth failure answered on it, if any (a 4001 follows). */
  authError?: string;
  /**
   * The largest send or call written on it: a close 1009 (frame too large)
   * fails that one with `too_large` instead of sending it again forever.
   */
  largest?: { bytes: number; fail(err: CourierError): void };
}

/** A request waiting for its answer on the current socket. */
interface Pending {
  onAnswer(frame: ServerFrame): void;
  /** The socket it went on was lost. */
  onLost(): void;
}

/** A call (not a send) waiting for a socket or its answer. */
interface Call {
  frame: ClientFrame;
  resolve(frame: ServerFrame): void;
  reject(err: CourierError): void;
  timer: ReturnType<typeof setTimeout>;
  ref?: Ref;
}

interface OutgoingSend {
  clientMsgId: string;
  channelId: string;
  text: string;
  opts: SendOptions;
  /** Every promise handed out for this clientMsgId (a repeated send() joins the first). */
  settle: { resolve(r: SendResult): void; reject(e: CourierError): void }[];
  settled: boolean;
  ref?: Ref;
  timer?: ReturnType<typeof setTimeout>;
}

type ChannelPhase = 'unjoined' | 'joining' | 'replaying' | 'paging' | 'live';

interface ChannelState {
  id: string;
  /** The highest seq delivered to the app; undefined until the first join answers. */
  delivered?: number;
  phase: ChannelPhase;
  /** Pushes held while paging, released in order afterwards. */
  held: ServerFrame[];
  view?: ChannelView;
  waiters: { resolve(v: ChannelView): void; reject(e: CourierError): void }[];
}

const DEFAULT_TIMEOUT_MS = 10_000;
const PAGE = 100;
/** Refresh at least this long before the access token expires. */
const REFRESH_LEAD_MS = 1_500;
/** A token this close to its expiry counts as expired when connecting. */
const EXPIRED_MARGIN_MS = 250;
/** Retry a failed (network) refresh after this long. */
const REFRESH_RETRY_MS = 2_000;

function randomId(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === 'function') return c.randomUUID();
  // crypto.randomUUID exists only in secure contexts (https, localhost).
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function wsUrlFrom(baseUrl: string): string {
  const u = new URL(baseUrl);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = u.pathname.replace(/\/+$/, '') + '/ws';
  u.search = '';
  u.hash = '';
  return u.toString();
}

function channelOf(frame: ServerFrame): string | undefined {
  switch (frame.type) {
    case 'new_message':
    case 'message_updated':
    case 'message_deleted':
      return frame.data.channelId;
    case 'typing':
    case 'read_receipt':
    case 'reaction_updated':
    case 'message_status':
    case 'message_flagged':
      return frame.channelId;
    default:
      return undefined;
  }
}

/** Pushes whose order relative to the channel's messages matters: held while paging. */
function isOrdered(frame: ServerFrame): boolean {
  return frame.type === 'new_message' || frame.type === 'message_updated' || frame.type === 'message_deleted' || frame.type === 'reaction_updated';
}

export class CourierClient {
  #opts: Required<Pick<ClientOptions, 'baseUrl' | 'encoding' | 'requestTimeoutMs' | 'heartbeatMarginMs' | 'refreshAt'>> & {
    url: string;
    backoff: BackoffOptions;
  };
  #WebSocket: WebSocketConstructor;
  #fetch: FetchLike;
  #session: Session;
  /** When the current access token expires, local clock (ms). */
  #expiresAt = 0;
  /** serverTime - Date.now() at the last authentication. */
  #skewMs = 0;
  #state: ClientState = 'idle';
  #user: User | undefined;
  #handlers = new Map<EventName, Set<(...args: never[]) => void>>();

  #sock: Socket | undefined;
  #nextRef = 1;
  #pending = new Map<Ref, Pending>();
  #calls = new Set<Call>();
  #sends = new Map<string, OutgoingSend>();
  #channels = new Map<string, ChannelState>();
  #attempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #refreshing: Promise<Session> | undefined;
  #connectWaiters: { resolve(): void; reject(e: CourierError): void }[] = [];

  constructor(options: ClientOptions) {
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket;
    if (WS === undefined) {
      throw new TypeError('no WebSocket: pass the `WebSocket` option (Node 20: run with --experimental-websocket)');
    }
    this.#WebSocket = WS as WebSocketConstructor;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#opts = {
      baseUrl: options.baseUrl,
      url: options.url ?? wsUrlFrom(options.baseUrl),
      encoding: options.encoding ?? 'msgpack',
      requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS,
      heartbeatMarginMs: options.heartbeatMarginMs ?? 5_000,
      refreshAt: options.refreshAt ?? 0.8,
      backoff: { ...DEFAULT_BACKOFF, ...options.reconnect },
    };
    this.#session = options.session;
    this.#adoptSession(options.session, false);
  }

  // -------------------------------------------------------------------------
  // Events
  // -------------------------------------------------------------------------

  /** Adds a handler; returns the function that removes it. */
  on<E extends EventName>(event: E, handler: Handler<E>): () => void {
    let set = this.#handlers.get(event);
    if (set === undefined) this.#handlers.set(event, (set = new Set()));
    set.add(handler as (...args: never[]) => void);
    return () => this.off(event, handler);
  }

  off<E extends EventName>(event: E, handler: Handler<E>): void {
    this.#handlers.get(event)?.delete(handler as (...args: never[]) => void);
  }

  #emit<E extends EventName>(event: E, ...args: ClientEvents[E]): void {
    const set = this.#handlers.get(event);
    if (set === undefined) return;
    for (const h of [...set]) {
      try {
        (h as (...a: ClientEvents[E]) => void)(...args);
      } catch (e) {
        // An app handler's bug must not break the connection's bookkeeping.
        console.error(`@courier/client: a '${event}' handler threw`, e);
      }
    }
  }

  // -------------------------------------------------------------------------
  // State
  // -------------------------------------------------------------------------

  get state(): ClientState {
    return this.#state;
  }

  /** The authenticated user, or undefined before the first authentication. */
  get user(): User | undefined {
    return this.#user;
  }

  /** The current session (renewed by refreshes). */
  get session(): Session {
    return this.#session;
  }

  /** Resolves on the first successful authenticate (at once when connected); rejects when the client stops or is closed first. */
  connect(): Promise<void> {
    if (this.#state === 'connected') return Promise.resolve();
    if (this.#state === 'closed') return Promise.reject(new CourierError('closed', 'the client is closed'));
    const p = new Promise<void>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === 'idle' || this.#state === 'stopped') {
      this.#attempt = 0;
      void this.#open();
    }
    return p;
  }

  /** Closes the socket for good: no reconnect; waiting calls and sends reject 'closed'. */
  close(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#refreshTimer);
    const sock = this.#sock;
    if (sock !== undefined) {
      this.#detach(sock);
      try {
        sock.ws.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
      this.#emit('disconnected', 1000, 'client closed');
    }
    this.#failEverything(new CourierError('closed', 'the client is closed'));
  }

  /** New tokens (a fresh login, or tokens refreshed elsewhere); restarts a stopped client. */
  setSession(session: Session): void {
    const sameUser = this.#session.user.id === session.user.id;
    this.#adoptSession(session, false);
    if (this.#state === 'stopped') {
      this.#attempt = 0;
      void this.#open();
    } else if (this.#state === 'connected' && this.#sock !== undefined) {
      if (sameUser) this.#reauthenticate(this.#sock);
      else this.#drop(this.#sock, 4000, 'session changed to another user');
    }
  }

  // -------------------------------------------------------------------------
  // Calls
  // -------------------------------------------------------------------------

  /**
   * Joins a channel and remembers it: after every reconnect it is joined
   * again from the last delivered seq. Resolves with the channel.
   */
  join(channelId: string, options: JoinOptions = {}): Promise<ChannelView> {
    if (this.#state === 'closed') return Promise.reject(new CourierError('closed', 'the client is closed'));
    let ch = this.#channels.get(channelId);
    if (ch !== undefined && ch.view !== undefined && ch.phase !== 'unjoined' && ch.phase !== 'joining') {
      return Promise.resolve(ch.view);
    }
    if (ch === undefined) {
      ch = { id: channelId, phase: 'unjoined', held: [], waiters: [] };
      if (options.sinceSeq !== undefined) ch.delivered = options.sinceSeq;
      this.#channels.set(channelId, ch);
    }
    const channel = ch;
    const p = new Promise<ChannelView>((resolve, reject) => {
      // The channel stays remembered (joined once a socket allows); only this call gives up.
      const waiter = {
        resolve: (v: ChannelView) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e: CourierError) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        const i = channel.waiters.indexOf(waiter);
        if (i >= 0) channel.waiters.splice(i, 1);
        reject(new CourierError('timeout', `no answer to join_channel within ${this.#opts.requestTimeoutMs} ms`));
      }, this.#opts.requestTimeoutMs);
      channel.waiters.push(waiter);
    });
    if (this.#sock?.authenticated && channel.phase === 'unjoined') this.#sendJoin(this.#sock, channel);
    return p;
  }

  /** Leaves a channel: no more pushes, no rejoin. */
  async leave(channelId: string): Promise<void> {
    this.#usable();
    const ch = this.#channels.get(channelId);
    this.#channels.delete(channelId);
    ch?.waiters.forEach((w) => w.reject(new CourierError('closed', 'left the channel')));
    if (this.#sock?.authenticated) await this.#call({ type: 'leave_channel', channelId });
  }

  /**
   * Sends a message. Resolves once, with the ack (sent after the commit);
   * kept and resent with the same clientMsgId across reconnects until
   * answered. Rejects CourierError (`rate_limited` with retryAfterMs,
   * `forbidden`, `too_large`, ...; `timeout` when a socket carried it for
   * requestTimeoutMs without an answer: it is still resent until answered).
   */
  send(channelId: string, text: string, options: SendOptions = {}): Promise<SendResult> {
    if (this.#state === 'closed') return Promise.reject(new CourierError('closed', 'the client is closed'));
    if (this.#state === 'stopped') return Promise.reject(new CourierError('closed', 'the client is stopped (setSession restarts it)'));
    const clientMsgId = options.clientMsgId ?? randomId();
    return new Promise<SendResult>((resolve, reject) => {
      const existing = this.#sends.get(clientMsgId);
      if (existing !== undefined) {
        existing.settle.push({ resolve, reject });
        existing.settled = false;
        return;
      }
      const s: OutgoingSend = { clientMsgId, channelId, text, opts: options, settle: [{ resolve, reject }], settled: false };
      this.#sends.set(clientMsgId, s);
      if (this.#sock?.authenticated) this.#transmitSend(this.#sock, s);
    });
  }

  async edit(messageId: string, text: string): Promise<void> {
    await this.#call({ type: 'edit_message', messageId, text });
  }

  async delete(messageId: string): Promise<void> {
    await this.#call({ type: 'delete_message', messageId });
  }

  /** Typing indicator (no answer; dropped while disconnected). */
  typing(channelId: string, isTyping = true): void {
    const sock = this.#sock;
    if (sock?.authenticated) this.#write(sock, { type: 'typing_indicator', channelId, isTyping });
  }

  async markRead(channelId: string, seq: number): Promise<void> {
    await this.#call({ type: 'read_receipt', channelId, seq });
  }

  /** A page of history, ascending seq: the newest `limit` (default 50, at most 100), or those before `beforeSeq`. */
  async history(channelId: string, options: { beforeSeq?: number; limit?: number } = {}): Promise<HistoryPage> {
    const frame = await this.#call({ type: 'fetch_history', channelId, beforeSeq: options.beforeSeq, limit: options.limit });
    if (frame.type !== 'history') throw new CourierError('invalid_frame', `expected history, got ${frame.type}`);
    return { messages: frame.messages, hasMore: frame.hasMore };
  }

  async react(messageId: string, reaction: string): Promise<void> {
    await this.#call({ type: 'add_reaction', messageId, reaction });
  }

  async unreact(messageId: string, reaction: string): Promise<void> {
    await this.#call({ type: 'remove_reaction', messageId, reaction });
  }

  /** Opens (creating on first use) the direct channel with a user; it is joined and remembered like join(). */
  async openDirect(userId: string): Promise<ChannelView> {
    const frame = await this.#call({ type: 'open_direct', userId });
    if (frame.type !== 'ack' || frame.result !== 'channel') throw new CourierError('invalid_frame', 'open_direct answered no channel');
    const view = frame.channel;
    let ch = this.#channels.get(view.id);
    if (ch === undefined) {
      ch = { id: view.id, phase: 'live', held: [], waiters: [], delivered: view.lastSeq };
      this.#channels.set(view.id, ch);
    }
    ch.view = view;
    return view;
  }

  async setStatus(status: UserStatus): Promise<void> {
    await this.#call({ type: 'set_status', status });
  }

  /** A `ping` round trip: the server's time and the round trip in ms. */
  async ping(): Promise<{ serverTime: number; rttMs: number }> {
    const start = Date.now();
    const frame = await this.#call({ type: 'ping' });
    return { serverTime: frame.type === 'pong' ? frame.serverTime : 0, rttMs: Date.now() - start };
  }

  /**
   * A REST request with `Authorization: Bearer` (path relative to baseUrl,
   * e.g. '/api/channels'). On 401 it refreshes the token once and retries.
   * Resolves the parsed JSON (undefined for 204); rejects CourierError.
   */
  async api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const url = joinUrl(this.#opts.baseUrl, path);
    try {
      return (await requestJson(this.#fetch, method, url, body, this.#session.token)) as T;
    } catch (e) {
      if (!(e instanceof CourierError) || e.status !== 401) throw e;
      await this.#refresh();
      return (await requestJson(this.#fetch, method, url, body, this.#session.token)) as T;
    }
  }

  // -------------------------------------------------------------------------
  // The socket
  // -------------------------------------------------------------------------

  #usable(): void {
    if (this.#state === 'closed') throw new CourierError('closed', 'the client is closed');
  }

  async #open(): Promise<void> {
    if (this.#state === 'closed') return;
    this.#state = 'connecting';
    this.#emit('connecting');
    // An expired token is refreshed first: authenticating with it would only
    // earn a 4001. (One about to expire is refreshed on the open socket.)
    if (Date.now() >= this.#expiresAt - EXPIRED_MARGIN_MS) {
      try {
        await this.#refresh();
      } catch (e) {
        if (this.#state !== 'connecting') return;
        const err = e as CourierError;
        if (err.status === 401 || err.code === 'auth_failed') {
          this.#stop(4001, `the session cannot be refreshed: ${err.message}`);
        } else {
          this.#emit('disconnected', 1006, `refresh failed: ${err.message}`);
          this.#scheduleReconnect();
        }
        return;
      }
      if (this.#state !== 'connecting') return;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(this.#opts.url);
    } catch (e) {
      this.#emit('disconnected', 1006, `cannot open ${this.#opts.url}: ${(e as Error).message}`);
      this.#scheduleReconnect();
      return;
    }
    ws.binaryType = 'arraybuffer';
    const sock: Socket = {
      ws,
      ended: false,
      authenticated: false,
      token: this.#session.token,
      authRef: this.#ref(),
      heartbeatMs: 0,
      lastFrameAt: Date.now(),
      lastPingAt: Date.now(),
    };
    this.#sock = sock;
    // The upgrade and the authentication get one request timeout.
    sock.authTimer = setTimeout(() => this.#drop(sock, 4000, 'no authentication_response in time'), this.#opts.requestTimeoutMs);
    ws.onopen = () => {
      if (sock.ended) return;
      sock.token = this.#session.token;
      this.#write(sock, { type: 'authenticate', ref: sock.authRef, token: sock.token });
    };
    ws.onmessage = (ev) => {
      if (sock.ended) return;
      this.#onData(sock, ev.data);
    };
    ws.onerror = () => {
      // A socket that is not open after an error is gone: Node 20's WebSocket
      // fires no close event after a failed connection. An open one gets its
      // close event next (and the heartbeat is the backstop).
      if (!sock.ended && ws.readyState !== 1) this.#drop(sock, 1006, 'connection failed');
    };
    ws.onclose = (ev) => {
      if (sock.ended) return;
      this.#lost(sock, ev.code, ev.reason);
    };
  }

  #ref(): number {
    const r = this.#nextRef;
    this.#nextRef = r >= Number.MAX_SAFE_INTEGER ? 1 : r + 1;
    return r;
  }

  #write(sock: Socket, frame: ClientFrame, fail?: (err: CourierError) => void): boolean {
    if (sock.ended || sock.ws.readyState !== 1) return false;
    try {
      const data = encodeClient(frame, this.#opts.encoding);
      const bytes = typeof data === 'string' ? data.length * 3 : data.byteLength;
      if (fail !== undefined && bytes > (sock.largest?.bytes ?? 0)) sock.largest = { bytes, fail };
      sock.ws.send(data);
      return true;
    } catch {
      return false;
    }
  }

  /** Stops listening to a socket: it is no longer the client's. */
  #detach(sock: Socket): void {
    sock.ended = true;
    clearInterval(sock.pingTimer);
    clearTimeout(sock.deadTimer);
    clearTimeout(sock.authTimer);
    sock.ws.onopen = sock.ws.onmessage = sock.ws.onclose = sock.ws.onerror = null;
    if (this.#sock === sock) this.#sock = undefined;
  }

  /** Gives up a socket from this side (dead, too slow to authenticate) and handles it as lost. */
  #drop(sock: Socket, code: number, reason: string): void {
    if (sock.ended) return;
    // Detached first: Node 20's WebSocket fires `error` again, synchronously,
    // when a socket that failed to connect is closed. And no waiting for the
    // closing handshake of a dead socket.
    this.#lost(sock, code === 4000 ? 1006 : code, reason);
    try {
      sock.ws.close(code >= 4000 && code < 5000 ? code : 1000, reason.slice(0, 60));
    } catch {
      /* already closing */
    }
  }

  /** A socket ended: settle what depended on it, then reconnect or stop. */
  #lost(sock: Socket, code: number, reason: string): void {
    if (sock.ended) return;
    const wasAuthenticated = sock.authenticated;
    this.#detach(sock);
    if (code === 1009 && sock.largest !== undefined) {
      sock.largest.fail(new CourierError('too_large', 'the frame is over the server\'s frame limit (close 1009)'));
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.onLost();
    for (const ch of this.#channels.values()) {
      ch.phase = 'unjoined';
      ch.held = [];
    }
    this.#emit('disconnected', code, reason);
    if (this.#state === 'closed' || this.#state === 'stopped') return;

    if (code === 4003) {
      this.#stop(code, reason || 'session revoked');
      return;
    }
    if (code === 4001) {
      if (this.#session.token !== sock.token) {
        // The token was replaced meanwhile (a refresh whose re-authentication
        // came too late): the new one is worth a connection.
        this.#scheduleReconnect(0);
        return;
      }
      if (Date.now() >= this.#refreshDueAt() - 250 || sock.authError === 'expired') {
        // Expired (or due): one refresh, then a new connection; a refused
        // refresh stops the client in #open.
        this.#expiresAt = 0;
        this.#scheduleReconnect(0);
        return;
      }
      this.#stop(code, reason || sock.authError || 'authentication failed');
      return;
    }
    if (wasAuthenticated) this.#attempt = 0;
    this.#scheduleReconnect();
  }

  #scheduleReconnect(delayMs?: number): void {
    if (this.#state === 'closed' || this.#state === 'stopped') return;
    this.#attempt += 1;
    const delay = delayMs ?? backoffDelay(this.#attempt, this.#opts.backoff);
    this.#state = 'reconnecting';
    this.#emit('reconnecting', this.#attempt, delay);
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => void this.#open(), delay);
  }

  #stop(code: number, reason: string): void {
    this.#state = 'stopped';
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#refreshTimer);
    const err = new CourierError('closed', `stopped: ${reason}`);
    this.#failCalls(err);
    for (const s of this.#sends.values()) this.#settleSend(s, undefined, err);
    this.#sends.clear();
    for (const ch of this.#channels.values()) for (const w of ch.waiters.splice(0)) w.reject(err);
    for (const w of this.#connectWaiters.splice(0)) w.reject(new CourierError('auth_failed', reason));
    this.#emit('stopped', code, reason);
  }

  #failCalls(err: CourierError): void {
    for (const c of [...this.#calls]) {
      clearTimeout(c.timer);
      c.reject(err);
    }
    this.#calls.clear();
  }

  #failEverything(err: CourierError): void {
    this.#failCalls(err);
    for (const s of this.#sends.values()) this.#settleSend(s, undefined, err);
    this.#sends.clear();
    for (const ch of this.#channels.values()) for (const w of ch.waiters.splice(0)) w.reject(err);
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    this.#pending.clear();
  }

  // -------------------------------------------------------------------------
  // Incoming frames
  // -------------------------------------------------------------------------

  #onData(sock: Socket, data: unknown): void {
    sock.lastFrameAt = Date.now();
    if (sock.authenticated) this.#armDeadline(sock);
    let frame: ServerFrame;
    try {
      frame = decodeServer(data);
    } catch (e) {
      this.#emit('error', e as CourierError);
      return;
    }
    if (frame.type === 'authentication_response') {
      this.#onAuthResponse(sock, frame);
      return;
    }
    if (frame.type === 'ack' || frame.type === 'history' || frame.type === 'pong' || (frame.type === 'error' && frame.ref !== undefined)) {
      const r = frame.ref;
      const p = r === undefined ? undefined : this.#pending.get(r);
      if (p !== undefined && r !== undefined) {
        this.#pending.delete(r);
        p.onAnswer(frame);
      }
      return;
    }
    if (frame.type === 'error') {
      // An error without ref. A failed replay: rejoin from what was delivered.
      if (frame.code === 'internal' && [...this.#channels.values()].some((c) => c.phase === 'replaying')) {
        this.#drop(sock, 4000, `a replay failed: ${frame.message}`);
        return;
      }
      if (frame.code === 'auth_failed' && /expire/i.test(frame.message)) sock.authError = 'expired';
      this.#emit('error', new CourierError(frame.code, frame.message, frame.retryAfterMs === undefined ? {} : { retryAfterMs: frame.retryAfterMs }));
      return;
    }
    if (frame.type === 'recovered') {
      const ch = this.#channels.get(frame.channelId);
      if (ch !== undefined && ch.phase === 'replaying') {
        ch.phase = 'live';
        ch.delivered = Math.max(ch.delivered ?? 0, frame.lastSeq);
        this.#emit('recovered', { channelId: ch.id, lastSeq: frame.lastSeq, paged: false });
      }
      return;
    }
    const channelId = channelOf(frame);
    const ch = channelId === undefined ? undefined : this.#channels.get(channelId);
    if (ch !== undefined && ch.phase === 'paging' && isOrdered(frame)) {
      ch.held.push(frame);
      return;
    }
    this.#deliver(ch, frame);
  }

  /** Hands a push to the app; messages only when their seq is above the channel's delivered one. */
  #deliver(ch: ChannelState | undefined, frame: ServerFrame): void {
    switch (frame.type) {
      case 'new_message': {
        if (ch !== undefined) {
          if (ch.delivered !== undefined && frame.data.seq <= ch.delivered) return;
          ch.delivered = frame.data.seq;
        }
        this.#emit('message', frame.data);
        return;
      }
      case 'message_updated':
        this.#emit('messageUpdated', frame.data);
        return;
      case 'message_deleted':
        this.#emit('messageDeleted', frame.data);
        return;
      case 'typing':
        this.#emit('typing', { channelId: frame.channelId, userId: frame.userId, isTyping: frame.isTyping });
        return;
      case 'read_receipt':
        this.#emit('readReceipt', { channelId: frame.channelId, userId: frame.userId, seq: frame.seq });
        return;
      case 'reaction_updated':
        this.#emit('reaction', { channelId: frame.channelId, messageId: frame.messageId, reactions: frame.reactions });
        return;
      case 'presence':
        this.#emit('presence', { userId: frame.userId, status: frame.status, lastSeen: frame.lastSeen });
        return;
      case 'system_event':
        this.#emit('system', { eventType: frame.eventType, data: frame.data });
        return;
      case 'notification':
        this.#emit('notification', { data: frame.data });
        return;
      case 'message_status': {
        const { type: _type, ...rest } = frame;
        this.#emit('messageStatus', rest);
        return;
      }
      case 'message_flagged': {
        const { type: _type, ...rest } = frame;
        this.#emit('messageFlagged', rest);
        return;
      }
      default:
        return;
    }
  }

  #onAuthResponse(sock: Socket, frame: Extract<ServerFrame, { type: 'authentication_response' }>): void {
    if (!frame.success) {
      // Close 4001 follows; #lost decides between refresh and stop.
      sock.authError = /expire/i.test(frame.error.message) ? 'expired' : frame.error.message;
      if (sock.authenticated && frame.ref !== sock.authRef) {
        // A re-authentication was refused: the socket goes on with the old
        // token until the server closes it.
        this.#emit('error', new CourierError(frame.error.code, frame.error.message));
      }
      return;
    }
    this.#skewMs = frame.serverTime - Date.now();
    if (sock.authenticated) return; // a re-authentication extended the socket
    sock.authenticated = true;
    clearTimeout(sock.authTimer);
    sock.heartbeatMs = frame.heartbeatMs > 0 ? frame.heartbeatMs : 30_000;
    this.#user = frame.user;
    this.#attempt = 0;
    this.#state = 'connected';
    this.#startHeartbeat(sock);
    this.#scheduleRefresh();
    this.#emit('connected', { user: frame.user, sessionId: frame.sessionId, serverTime: frame.serverTime, heartbeatMs: frame.heartbeatMs });
    if (sock.ended) return; // a handler closed the client
    // Rejoins first, then the sends waiting for an answer, then other calls:
    // one connection's frames are handled in order.
    for (const ch of this.#channels.values()) this.#sendJoin(sock, ch);
    for (const s of this.#sends.values()) this.#transmitSend(sock, s);
    for (const c of this.#calls) if (c.ref === undefined) this.#transmitCall(sock, c);
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
  }

  // -------------------------------------------------------------------------
  // Heartbeat
  // -------------------------------------------------------------------------

  #startHeartbeat(sock: Socket): void {
    sock.pingTimer = setInterval(() => {
      sock.lastPingAt = Date.now();
      this.#write(sock, { type: 'ping' });
    }, sock.heartbeatMs);
    this.#armDeadline(sock);
  }

  #armDeadline(sock: Socket): void {
    clearTimeout(sock.deadTimer);
    sock.deadTimer = setTimeout(() => {
      // Timers of a background tab run late: a ping that never went out is no
      // reason to give up; send it and wait a margin more.
      if (Date.now() - sock.lastPingAt > sock.heartbeatMs + this.#opts.heartbeatMarginMs) {
        sock.lastPingAt = Date.now();
        this.#write(sock, { type: 'ping' });
        sock.deadTimer = setTimeout(() => this.#drop(sock, 4000, 'no frame within the heartbeat'), this.#opts.heartbeatMarginMs);
        return;
      }
      this.#drop(sock, 4000, 'no frame within the heartbeat');
    }, sock.heartbeatMs + this.#opts.heartbeatMarginMs);
  }

  // -------------------------------------------------------------------------
  // Requests
  // -------------------------------------------------------------------------

  /**
   * A request answered by ack/history/pong or error: sent now when
   * connected, else on the next connection; a socket lost before the answer
   * sends it again on the next one, all within requestTimeoutMs of the call.
   */
  #call(frame: ClientFrame): Promise<ServerFrame> {
    this.#usable();
    if (this.#state === 'stopped') return Promise.reject(new CourierError('closed', 'the client is stopped'));
    return new Promise<ServerFrame>((resolve, reject) => {
      const call: Call = {
        frame,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#calls.delete(call);
          if (call.ref !== undefined) this.#pending.delete(call.ref);
          reject(new CourierError('timeout', `no answer to ${frame.type} within ${this.#opts.requestTimeoutMs} ms`));
        }, this.#opts.requestTimeoutMs),
      };
      this.#calls.add(call);
      if (this.#sock?.authenticated) this.#transmitCall(this.#sock, call);
    });
  }

  #transmitCall(sock: Socket, call: Call): void {
    const ref = this.#ref();
    call.ref = ref;
    this.#pending.set(ref, {
      onAnswer: (answer) => {
        clearTimeout(call.timer);
        this.#calls.delete(call);
        if (answer.type === 'error') call.reject(new CourierError(answer.code, answer.message, answer.retryAfterMs === undefined ? {} : { retryAfterMs: answer.retryAfterMs }));
        else call.resolve(answer);
      },
      onLost: () => {
        call.ref = undefined;
      },
    });
    this.#write(sock, { ...call.frame, ref } as ClientFrame, (err) => {
      this.#pending.delete(ref);
      clearTimeout(call.timer);
      this.#calls.delete(call);
      call.reject(err);
    });
  }

  #sendJoin(sock: Socket, ch: ChannelState): void {
    const ref = this.#ref();
    const sinceSeq = ch.delivered;
    ch.phase = 'joining';
    this.#pending.set(ref, {
      onAnswer: (answer) => this.#onJoinAnswer(sock, ch, sinceSeq, answer),
      onLost: () => {},
    });
    this.#write(sock, { type: 'join_channel', ref, channelId: ch.id, sinceSeq });
  }

  #onJoinAnswer(sock: Socket, ch: ChannelState, sinceSeq: number | undefined, answer: ServerFrame): void {
    if (this.#channels.get(ch.id) !== ch) return; // left meanwhile
    if (answer.type === 'error') {
      const err = new CourierError(answer.code, answer.message);
      this.#channels.delete(ch.id);
      const waiters = ch.waiters.splice(0);
      for (const w of waiters) w.reject(err);
      if (waiters.length === 0) {
        this.#emit('channelLost', { channelId: ch.id, error: err });
        this.#emit('error', err);
      }
      return;
    }
    if (answer.type !== 'ack' || answer.result !== 'channel') return;
    const view = answer.channel;
    ch.view = view;
    if (sinceSeq === undefined) {
      ch.phase = 'live';
      ch.delivered = Math.max(ch.delivered ?? 0, view.lastSeq);
    } else if (view.recovered) {
      ch.phase = 'replaying';
    } else {
      ch.phase = 'paging';
      void this.#page(sock, ch, view.lastSeq);
    }
    for (const w of ch.waiters.splice(0)) w.resolve(view);
    this.#emit('joined', view);
  }

  /** Fills a rejoin's gap past the replay limit: fetch_history forward from the delivered seq to `target`. */
  async #page(sock: Socket, ch: ChannelState, target: number): Promise<void> {
    let cursor = ch.delivered ?? 0;
    try {
      while (cursor < target) {
        const answer = await this.#socketRequest(sock, { type: 'fetch_history', channelId: ch.id, beforeSeq: cursor + 1 + PAGE, limit: PAGE });
        if (sock.ended || ch.phase !== 'paging') return;
        if (answer.type === 'error') throw new CourierError(answer.code, answer.message);
        if (answer.type !== 'history') throw new CourierError('invalid_frame', `expected history, got ${answer.type}`);
        for (const m of answer.messages) {
          if (m.seq > cursor && m.seq > (ch.delivered ?? 0)) {
            ch.delivered = m.seq;
            this.#emit('message', m);
          }
        }
        cursor += PAGE;
      }
    } catch (e) {
      if (sock.ended) return;
      // Could not page (forbidden now, ...): start over on a new connection.
      this.#emit('error', e as CourierError);
      this.#drop(sock, 4000, `paging ${ch.id} failed: ${(e as Error).message}`);
      return;
    }
    ch.delivered = Math.max(ch.delivered ?? 0, target);
    ch.phase = 'live';
    const held = ch.held;
    ch.held = [];
    for (const f of held) this.#deliver(ch, f);
    this.#emit('recovered', { channelId: ch.id, lastSeq: target, paged: true });
  }

  /** A request on one given socket, answered or failed with it. */
  #socketRequest(sock: Socket, frame: ClientFrame): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      const ref = this.#ref();
      const timer = setTimeout(() => {
        this.#pending.delete(ref);
        reject(new CourierError('timeout', `no answer to ${frame.type} within ${this.#opts.requestTimeoutMs} ms`));
      }, this.#opts.requestTimeoutMs);
      this.#pending.set(ref, {
        onAnswer: (a) => {
          clearTimeout(timer);
          resolve(a);
        },
        onLost: () => {
          clearTimeout(timer);
          reject(new CourierError('closed', 'the socket was lost'));
        },
      });
      if (!this.#write(sock, { ...frame, ref } as ClientFrame)) {
        // #lost will call onLost once the socket's close is seen.
      }
    });
  }

  #transmitSend(sock: Socket, s: OutgoingSend): void {
    const ref = this.#ref();
    s.ref = ref;
    clearTimeout(s.timer);
    s.timer = setTimeout(() => {
      // Still resent on the next connection until answered; the app hears now.
      this.#settleSend(s, undefined, new CourierError('timeout', `no ack within ${this.#opts.requestTimeoutMs} ms`));
    }, this.#opts.requestTimeoutMs);
    this.#pending.set(ref, {
      onAnswer: (answer) => {
        clearTimeout(s.timer);
        this.#sends.delete(s.clientMsgId);
        if (answer.type === 'ack' && answer.result === 'sent') this.#settleSend(s, answer.sent);
        else if (answer.type === 'error') {
          this.#settleSend(s, undefined, new CourierError(answer.code, answer.message, answer.retryAfterMs === undefined ? {} : { retryAfterMs: answer.retryAfterMs }));
        } else this.#settleSend(s, undefined, new CourierError('invalid_frame', `send_message answered ${answer.type}`));
      },
      onLost: () => {
        // The clock runs only while a socket carries it.
        clearTimeout(s.timer);
        s.ref = undefined;
      },
    });
    const { clientMsgId, channelId, text, opts } = s;
    const fail = (err: CourierError) => {
      clearTimeout(s.timer);
      this.#sends.delete(s.clientMsgId);
      this.#settleSend(s, undefined, err);
    };
    this.#write(sock, {
      type: 'send_message',
      ref,
      channelId,
      text,
      clientMsgId,
      containsPHI: opts.containsPHI,
      replyTo: opts.replyTo,
      ttlSeconds: opts.ttlSeconds,
      attachments: opts.attachments?.length ? opts.attachments : undefined,
      patientRef: opts.patientRef,
    }, fail);
  }

  #settleSend(s: OutgoingSend, result: SendResult | undefined, err?: CourierError): void {
    if (s.settled) return;
    s.settled = true;
    for (const p of s.settle.splice(0)) {
      if (result !== undefined) p.resolve(result);
      else p.reject(err ?? new CourierError('closed', 'send failed'));
    }
  }

  // -------------------------------------------------------------------------
  // Tokens
  // -------------------------------------------------------------------------

  #adoptSession(session: Session, emit: boolean): void {
    this.#session = session;
    const fromJwt = jwtExpiry(session.token);
    this.#expiresAt =
      fromJwt !== undefined ? fromJwt - this.#skewMs : (session.expiresAt ?? Date.now() + session.expiresIn * 1000);
    if (emit) this.#emit('session', session);
    if (this.#state === 'connected') this.#scheduleRefresh();
  }

  /** When the token is due for refresh: at refreshAt of its lifetime, and at least REFRESH_LEAD_MS before expiry. */
  #refreshDueAt(): number {
    const lifetime = this.#session.expiresIn * 1000;
    return Math.min(this.#expiresAt - lifetime * (1 - this.#opts.refreshAt), this.#expiresAt - REFRESH_LEAD_MS);
  }

  #scheduleRefresh(): void {
    clearTimeout(this.#refreshTimer);
    const delay = Math.max(0, this.#refreshDueAt() - Date.now());
    this.#refreshTimer = setTimeout(() => {
      this.#refresh().then(
        () => undefined,
        (e: CourierError) => {
          if (this.#state === 'closed' || this.#state === 'stopped') return;
          this.#emit('error', e);
          // A refused refresh token leaves the socket to its expiry (4001,
          // then stopped); a network failure is retried while time remains.
          if (e.status !== 401 && e.code !== 'auth_failed' && Date.now() < this.#expiresAt) {
            clearTimeout(this.#refreshTimer);
            this.#refreshTimer = setTimeout(() => this.#scheduleRefresh(), REFRESH_RETRY_MS);
          }
        },
      );
    }, delay);
  }

  /** One refresh at a time: concurrent callers share it. Re-authenticates the open socket. */
  #refresh(): Promise<Session> {
    if (this.#refreshing !== undefined) return this.#refreshing;
    const p = refreshSession(this.#opts.baseUrl, this.#session, { fetch: this.#fetch })
      .then((session) => {
        if (this.#state === 'closed') return session;
        this.#adoptSession(session, true);
        const sock = this.#sock;
        if (sock?.authenticated) this.#reauthenticate(sock);
        return session;
      })
      .finally(() => {
        this.#refreshing = undefined;
      });
    this.#refreshing = p;
    return p;
  }

  #reauthenticate(sock: Socket): void {
    sock.token = this.#session.token;
    sock.authError = undefined;
    this.#write(sock, { type: 'authenticate', ref: this.#ref(), token: sock.token });
  }
}
