// Starts the real Courier binary for the tests: a free port, a fresh data
// directory, the rate limits raised; SIGKILL and restart on the same port and
// data directory.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CourierClient, login, type ClientOptions, type Message, type Session, type WebSocketConstructor, type WebSocketLike } from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/test -> sdk/typescript -> repo root */
const repoRoot = path.resolve(here, '../../../..');

export const COURIER_BIN = process.env.COURIER_BIN ?? path.join(repoRoot, 'target/debug/courier');

/** The initial super admin, who makes the channels. */
const ADMIN = 'root';
const PASSWORD = 'correct horse battery staple';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export async function until<T>(what: string, f: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class Server {
  readonly port: number;
  readonly dataDir: string;
  readonly env: Record<string, string>;
  child: ChildProcess | undefined;
  log = '';

  private constructor(port: number, env: Record<string, string>) {
    this.port = port;
    this.dataDir = mkdtempSync(path.join(tmpdir(), 'courier-sdk-ts-'));
    this.env = env;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts a server with these extra COURIER_* variables and waits for /health. */
  static async start(env: Record<string, string> = {}): Promise<Server> {
    const s = new Server(await freePort(), env);
    await s.spawn();
    return s;
  }

  async spawn(): Promise<void> {
    const child = spawn(COURIER_BIN, ['serve'], {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: process.env.HOME ?? '/tmp',
        COURIER_BIND: `127.0.0.1:${this.port}`,
        COURIER_DATA_DIR: this.dataDir,
        COURIER_LOG_FORMAT: 'json',
        COURIER_AUTH_PER_15MIN: '100000',
        COURIER_REST_PER_15MIN: '100000',
        COURIER_REGISTER_PER_HOUR: '100000',
        COURIER_SEND_PER_MINUTE: '100000',
        // Cheap password hashing: the tests log in often.
        COURIER_ARGON2_MEMORY_KIB: '64',
        COURIER_ARGON2_ITERATIONS: '1',
        COURIER_INITIAL_ADMIN_USERNAME: ADMIN,
        COURIER_INITIAL_ADMIN_PASSWORD: PASSWORD,
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const keep = (b: Buffer) => {
      this.log = (this.log + b.toString()).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let exited: number | null | undefined;
    child.once('exit', (code) => {
      exited = code;
    });
    await until(
      `courier on port ${this.port} to answer /health`,
      async () => {
        if (exited !== undefined) throw new Error(`courier exited with ${exited}:\n${this.log}`);
        try {
          const r = await fetch(`${this.baseUrl}/health`);
          return r.ok;
        } catch {
          return false;
        }
      },
      30_000,
      50,
    );
  }

  /** SIGKILL: no shutdown frame, no flush. */
  async kill(): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
    this.child = undefined;
  }

  async restart(): Promise<void> {
    await this.kill();
    this.#admin = undefined;
    await this.spawn();
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  async metrics(): Promise<string> {
    const r = await fetch(`${this.baseUrl}/metrics`);
    return r.text();
  }

  async rest(method: string, p: string, body?: unknown, token?: string): Promise<{ status: number; body: any }> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token !== undefined) headers.Authorization = `Bearer ${token}`;
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const r = await fetch(`${this.baseUrl}${p}`, init);
    const text = await r.text();
    return { status: r.status, body: text === '' ? undefined : JSON.parse(text) };
  }

  /** Registers a fresh user and logs in. */
  async user(name: string): Promise<Session> {
    const username = `${name}_${Math.random().toString(36).slice(2, 8)}`;
    const reg = await this.rest('POST', '/api/auth/register', { username, password: PASSWORD, email: `${username}@example.org` });
    if (reg.status !== 201) throw new Error(`register ${username}: ${reg.status} ${JSON.stringify(reg.body)}`);
    return login(this.baseUrl, username, PASSWORD);
  }

  #admin: Promise<Session> | undefined;

  /** The super admin's session (logged in once per start). */
  admin(): Promise<Session> {
    this.#admin ??= login(this.baseUrl, ADMIN, PASSWORD);
    return this.#admin;
  }

  /** A public channel created by `owner`. */
  async channel(name = `ch-${Math.random().toString(36).slice(2, 8)}`): Promise<string> {
    const admin = await this.admin();
    const r = await this.rest('POST', '/api/channels', { name, description: 'sdk test', kind: 'public' }, admin.token);
    if (r.status !== 201 && r.status !== 200) throw new Error(`create channel: ${r.status} ${JSON.stringify(r.body)}`);
    const id = r.body?.id ?? r.body?.channel?.id;
    if (typeof id !== 'string') throw new Error(`create channel answered ${JSON.stringify(r.body)}`);
    return id;
  }

  client(session: Session, opts: Partial<ClientOptions> = {}): CourierClient {
    return new CourierClient({ baseUrl: this.baseUrl, session, reconnect: { initialDelayMs: 50, maxDelayMs: 500 }, ...opts });
  }
}

/**
 * A switchable network between one client and the server: `blocked` refuses
 * new connections (they go to a closed port), `cut()` drops the open ones,
 * `muted` swallows everything the server sends (a socket gone silent
 * without closing). `connects` counts the sockets the client opened.
 */
export class Network {
  blocked = false;
  muted = false;
  connects = 0;
  readonly sockets = new Set<WebSocket>();
  readonly WebSocket: WebSocketConstructor;

  constructor() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const net = this;
    this.WebSocket = class implements WebSocketLike {
      onopen: ((ev: unknown) => void) | null = null;
      onmessage: ((ev: { data: unknown }) => void) | null = null;
      onclose: ((ev: { code: number; reason: string }) => void) | null = null;
      onerror: ((ev: unknown) => void) | null = null;
      readonly ws: WebSocket;
      constructor(url: string) {
        net.connects += 1;
        this.ws = new WebSocket(net.blocked ? 'ws://127.0.0.1:9/ws' : url);
        net.sockets.add(this.ws);
        this.ws.onopen = (e) => this.onopen?.(e);
        this.ws.onmessage = (e) => {
          if (!net.muted) this.onmessage?.(e);
        };
        this.ws.onclose = (e) => {
          net.sockets.delete(this.ws);
          this.onclose?.(e);
        };
        this.ws.onerror = (e) => this.onerror?.(e);
      }
      get binaryType(): string {
        return this.ws.binaryType;
      }
      set binaryType(v: string) {
        this.ws.binaryType = v as BinaryType;
      }
      get readyState(): number {
        return this.ws.readyState;
      }
      send(data: string | Uint8Array): void {
        this.ws.send(data as string | ArrayBufferView<ArrayBuffer>);
      }
      close(code?: number, reason?: string): void {
        this.ws.close(code, reason);
      }
    };
  }

  /** Drops every open socket (the client sees a close, as on a network failure). */
  cut(): void {
    for (const ws of this.sockets) ws.close(4000, 'network cut');
  }
}

/** Records what a client emits, for assertions. */
export class Recorder {
  readonly messages: Message[] = [];
  readonly events: { name: string; args: unknown[]; at: number }[] = [];

  constructor(readonly client: CourierClient) {
    client.on('message', (m) => this.messages.push(m));
    for (const name of ['connecting', 'connected', 'disconnected', 'reconnecting', 'stopped', 'session', 'recovered', 'channelLost', 'error'] as const) {
      client.on(name, (...args: unknown[]) => this.events.push({ name, args, at: Date.now() }));
    }
  }

  count(name: string): number {
    return this.events.filter((e) => e.name === name).length;
  }

  seqs(channelId: string): number[] {
    return this.messages.filter((m) => m.channelId === channelId).map((m) => m.seq);
  }

  texts(channelId: string): string[] {
    return this.messages.filter((m) => m.channelId === channelId).map((m) => m.text);
  }
}

/** Fails unless `seqs` is strictly increasing (each message once, in order). */
export function assertStrictlyIncreasing(seqs: number[], who: string): void {
  for (let i = 1; i < seqs.length; i++) {
    if (!(seqs[i]! > seqs[i - 1]!)) throw new Error(`${who}: seq ${seqs[i]} after ${seqs[i - 1]} at #${i}`);
  }
}
