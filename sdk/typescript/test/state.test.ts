// The client's state machine against a scripted fake server (no network):
// the paging arithmetic and hold-back, seq dedup, 4001 without a fix, 1009.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CourierClient, CourierError, type Message, type Session, type WebSocketLike } from '../src/index.js';
import { until } from './server.js';

type Frame = Record<string, any>;

/** A fake socket whose server side is a function of the client's frames. */
class FakeServer {
  sockets: FakeSocket[] = [];
  received: Frame[] = [];
  handler: (f: Frame, sock: FakeSocket) => void = () => {};
  readonly WebSocket = (() => {
    const server = this;
    return class extends FakeSocket {
      constructor(url: string) {
        super(url, server);
        server.sockets.push(this);
      }
    };
  })();
  get last(): FakeSocket {
    return this.sockets.at(-1)!;
  }
}

class FakeSocket implements WebSocketLike {
  binaryType = 'blob';
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(readonly url: string, readonly server: FakeServer) {
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 1);
  }
  send(data: string | Uint8Array): void {
    const f = JSON.parse(data as string) as Frame;
    this.server.received.push(f);
    queueMicrotask(() => this.server.handler(f, this));
  }
  push(f: Frame): void {
    if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(f) });
  }
  close(code = 1000, reason = ''): void {
    this.serverClose(code, reason);
  }
  serverClose(code: number, reason = ''): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 1);
  }
}

const CH = 'c4a1e0f2-6b7d-4e38-a9c5-1d2e3f405060';
const USER = { id: '0b5e6c1a-3f1d-4c2a-9e51-7a0d2f4b8c01', username: 'alice', role: 'user' };
const session: Session = { token: 'opaque-token', refreshToken: 'r1', expiresIn: 900, user: USER, expiresAt: Date.now() + 900_000 };

function msg(seq: number): Frame {
  return { id: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`, channelId: CH, seq, senderId: USER.id, sender: 'alice', text: `m${seq}`, timestamp: seq, containsPHI: false };
}

function authOk(f: Frame, sock: FakeSocket): boolean {
  if (f.type !== 'authenticate') return false;
  sock.push({ type: 'authentication_response', ref: f.ref, success: true, user: USER, sessionId: '5e55a0e1-8c2d-4f1e-9a3b-000000000001', serverTime: Date.now(), heartbeatMs: 30_000 });
  return true;
}

function channel(lastSeq: number, recovered: boolean): Frame {
  return { id: CH, name: 'ward-7', kind: 'public', lastSeq, lastReadSeq: 0, unread: lastSeq, recovered, online: [] };
}

function client(server: FakeServer, extra: Record<string, unknown> = {}): CourierClient {
  return new CourierClient({ baseUrl: 'http://courier.test', session, encoding: 'json', WebSocket: server.WebSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 5 }, ...extra });
}

test('recovered: false is paged forward (beforeSeq = cursor + 101, limit 100) while live pushes are held; each seq once', async (t) => {
  const server = new FakeServer();
  const store = new Map<number, Frame>();
  for (let s = 1; s <= 252; s++) if (s !== 150 && s !== 151) store.set(s, msg(s)); // 150, 151 deleted
  const fetches: [number, number][] = [];
  server.handler = (f, sock) => {
    if (authOk(f, sock)) return;
    if (f.type === 'join_channel') {
      if (f.sinceSeq === undefined) {
        sock.push({ type: 'ack', ref: f.ref, channel: channel(10, false) });
        return;
      }
      sock.push({ type: 'ack', ref: f.ref, channel: channel(250, false) });
      // Live ones arrive while the client pages: one it will page too, and newer.
      sock.push({ type: 'new_message', data: msg(250) });
      sock.push({ type: 'new_message', data: msg(251) });
      return;
    }
    if (f.type === 'fetch_history') {
      fetches.push([f.beforeSeq, f.limit]);
      const page = [...store.values()].filter((m) => m.seq < f.beforeSeq).slice(-f.limit);
      sock.push({ type: 'history', ref: f.ref, channelId: CH, messages: page, hasMore: true });
      if (fetches.length === 2) sock.push({ type: 'new_message', data: msg(252) });
    }
  };
  const c = client(server);
  t.after(() => c.close());
  const got: Message[] = [];
  const recovered: unknown[] = [];
  c.on('message', (m) => got.push(m));
  c.on('recovered', (r) => recovered.push(r));
  await c.connect();
  await c.join(CH);
  // Live 9, 10 (already covered by the join's lastSeq 10) and 11.
  for (const s of [9, 10, 11]) server.last.push({ type: 'new_message', data: msg(s) });
  assert.deepStrictEqual(got.map((m) => m.seq), [11]);
  // The socket drops; the rejoin asks sinceSeq 11 and is answered recovered: false.
  server.last.serverClose(1006);
  await until('paged to 252', () => got.at(-1)?.seq === 252, 5_000);
  const join = server.received.filter((f) => f.type === 'join_channel').at(-1)!;
  assert.equal(join.sinceSeq, 11);
  assert.deepStrictEqual(fetches, [[112, 100], [212, 100], [312, 100]]);
  const want = [11, ...Array.from({ length: 241 }, (_, i) => i + 12).filter((s) => s !== 150 && s !== 151)];
  assert.deepStrictEqual(got.map((m) => m.seq), want);
  assert.deepStrictEqual(recovered, [{ channelId: CH, lastSeq: 250, paged: true }]);
});

test('a 4001 whose token is neither expired nor replaced stops the client: no refresh, no reconnect', async (t) => {
  const server = new FakeServer();
  let fetches = 0;
  server.handler = (f, sock) => {
    if (f.type === 'authenticate') {
      sock.push({ type: 'authentication_response', ref: f.ref, success: false, error: { code: 'auth_failed', message: 'invalid token' } });
      sock.serverClose(4001, 'authentication failed');
    }
  };
  const c = client(server, { fetch: async () => { fetches++; throw new Error('no REST here'); } });
  t.after(() => c.close());
  const stopped: unknown[] = [];
  c.on('stopped', (...a) => stopped.push(a));
  await assert.rejects(c.connect(), (e: unknown) => e instanceof CourierError && e.code === 'auth_failed');
  assert.equal(c.state, 'stopped');
  assert.deepStrictEqual(stopped, [[4001, 'authentication failed']]);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(server.sockets.length, 1);
  assert.equal(fetches, 0);
});

test('close 1009 fails the oversized send with too_large; the other send is resent and resolves once', async (t) => {
  const server = new FakeServer();
  let seq = 0;
  const seen = new Map<string, number>();
  server.handler = (f, sock) => {
    if (authOk(f, sock)) return;
    if (f.type === 'send_message') {
      if (f.text.length > 1000) {
        sock.serverClose(1009, 'frame too large');
        return;
      }
      const dup = seen.has(f.clientMsgId);
      if (!dup) seen.set(f.clientMsgId, ++seq);
      sock.push({ type: 'ack', ref: f.ref, messageId: '01890a5d-ac96-774b-bcce-b302099a8057', seq: seen.get(f.clientMsgId), timestamp: 1, duplicate: dup });
    }
  };
  const c = client(server);
  t.after(() => c.close());
  await c.connect();
  // The big one goes first: the socket closes before the small one is answered.
  const big = c.send(CH, 'x'.repeat(5000));
  const small = c.send(CH, 'small');
  await assert.rejects(big, (e: unknown) => e instanceof CourierError && e.code === 'too_large');
  const r = await small;
  assert.equal(r.seq, 1);
  assert.equal(server.sockets.length, 2);
  assert.equal(server.received.filter((f) => f.type === 'send_message' && f.text.length > 1000).length, 1, 'the big one went once');
});
