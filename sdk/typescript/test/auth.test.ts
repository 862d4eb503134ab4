// Tokens: 3-second access tokens refreshed on the open socket (rotation
// kept), a 4001 at expiry answered by a refresh, and a revoked session that
// stops reconnecting until setSession.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Network, Recorder, Server, sleep, until } from './server.js';
import { CourierError, login, type Session } from '../src/index.js';

test('3 s access tokens: refreshed before expiry and re-authenticated on the open socket, rotation kept', async (t) => {
  const server = await Server.start({ COURIER_ACCESS_TOKEN_TTL_SECS: '3' });
  t.after(() => server.stop());
  const [alice, bob] = await Promise.all([server.user('alice'), server.user('bob')]);
  const channelId = await server.channel();
  const a = server.client(alice);
  const b = server.client(bob, { encoding: 'json' });
  t.after(() => {
    a.close();
    b.close();
  });
  const ra = new Recorder(a);
  const rb = new Recorder(b);
  await Promise.all([a.connect(), b.connect()]);
  await Promise.all([a.join(channelId), b.join(channelId)]);

  // Eight seconds, well past two lifetimes: alice sends every 400 ms.
  const until8s = Date.now() + 8_000;
  let n = 0;
  while (Date.now() < until8s) {
    await a.send(channelId, `tick ${++n}`);
    await sleep(400);
  }
  await until('bob has every tick', () => rb.seqs(channelId).length === n);

  for (const [who, r, first] of [['alice', ra, alice], ['bob', rb, bob]] as const) {
    assert.equal(r.count('disconnected'), 0, `${who} stayed connected`);
    assert.equal(r.count('connecting'), 1, `${who} connected once`);
    const sessions = r.events.filter((e) => e.name === 'session').map((e) => e.args[0] as Session);
    assert.ok(sessions.length >= 2, `${who} refreshed at least twice (${sessions.length})`);
    const refreshTokens = sessions.map((s) => s.refreshToken);
    assert.equal(new Set([first.refreshToken, ...refreshTokens]).size, refreshTokens.length + 1, `${who}: every refresh rotated the refresh token`);
    assert.equal(sessions.at(-1)!.user.id, first.user.id);
  }
  assert.deepStrictEqual(rb.seqs(channelId), Array.from({ length: n }, (_, i) => i + 1));
  // REST through the client uses the current token.
  const page = await a.api<{ messages: unknown[] }>('GET', `/api/channels/${channelId}/messages?limit=1`);
  assert.equal(page.messages.length, 1);
  assert.equal(a.state, 'connected');
  // The first refresh token stopped working when it was rotated (last: the
  // server may take its reuse as theft and end the session).
  const stale = await server.rest('POST', '/api/auth/refresh-token', { refreshToken: alice.refreshToken });
  assert.equal(stale.status, 401);
});

test('a 4001 at expiry (the refresh could not run in time) is answered by one refresh and a new connection', async (t) => {
  const server = await Server.start({ COURIER_ACCESS_TOKEN_TTL_SECS: '2' });
  t.after(() => server.stop());
  const [alice, bob] = await Promise.all([server.user('alice'), server.user('bob')]);
  const channelId = await server.channel();
  // Refreshes fail (the REST endpoint unreachable) until `refreshOk`.
  let refreshOk = false;
  let refreshCalls = 0;
  const fetchGate: typeof fetch = async (input, init) => {
    if (String(input).endsWith('/api/auth/refresh-token')) {
      refreshCalls += 1;
      if (!refreshOk) throw new TypeError('fetch failed (test: REST unreachable)');
    }
    return fetch(input, init);
  };
  const b = server.client(bob, { fetch: fetchGate });
  const a = server.client(alice);
  t.after(() => {
    a.close();
    b.close();
  });
  const rb = new Recorder(b);
  await Promise.all([a.connect(), b.connect()]);
  await Promise.all([a.join(channelId), b.join(channelId)]);
  await a.send(channelId, 'before expiry');
  await until('the socket closes 4001 at expiry', () => rb.events.some((e) => e.name === 'disconnected' && e.args[0] === 4001), 10_000);
  refreshOk = true;
  await until('bob is back', () => b.state === 'connected' && rb.count('connected') === 2, 10_000);
  await a.send(channelId, 'after expiry');
  await until('bob has both', () => rb.seqs(channelId).length === 2);
  assert.deepStrictEqual(rb.texts(channelId), ['before expiry', 'after expiry']);
  assert.equal(rb.count('stopped'), 0);
  assert.ok(rb.count('session') >= 1);
  assert.ok(refreshCalls >= 2);
});

test('a revoked session closes 4003: stopped, no further connection attempt, until setSession', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const bob = await server.user('bob');
  const channelId = await server.channel();
  const net = new Network();
  const b = server.client(bob, { WebSocket: net.WebSocket });
  t.after(() => b.close());
  const rb = new Recorder(b);
  await b.connect();
  await b.join(channelId);
  assert.equal(net.connects, 1);

  const logout = await server.rest('POST', '/api/auth/logout', undefined, bob.token);
  assert.equal(logout.status, 204);
  await until('stopped', () => rb.count('stopped') === 1);
  const stopped = rb.events.find((e) => e.name === 'stopped')!;
  assert.equal(stopped.args[0], 4003);
  assert.equal(b.state, 'stopped');
  await assert.rejects(b.send(channelId, 'after revocation'), (e: unknown) => e instanceof CourierError && e.code === 'closed');

  await sleep(3_000);
  assert.equal(net.connects, 1, 'no connection attempt after 4003');
  assert.equal(rb.count('connecting'), 1);
  assert.equal(rb.count('reconnecting'), 0);

  // A fresh login restarts it, and the channel is joined again.
  const again = await login(server.baseUrl, bob.user.username, 'correct horse battery staple');
  b.setSession(again);
  await until('connected again', () => b.state === 'connected');
  const r = await b.send(channelId, 'back');
  assert.equal(r.seq, 1);
  await until('bob gets his own message on the rejoined channel', () => rb.texts(channelId).includes('back'));
  assert.equal(net.connects, 2);
});
