// Outages: one longer than the server's replay limit is filled by paging
// fetch_history; a short one by the server's replay; a socket gone silent is
// found dead by the heartbeat.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Network, Recorder, Server, assertStrictlyIncreasing, sleep, until } from './server.js';

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('an outage past COURIER_RECOVERY_MAX_REPLAY is paged: every message once, in order, then live ones', async (t) => {
  const server = await Server.start({ COURIER_RECOVERY_MAX_REPLAY: '5' });
  t.after(() => server.stop());
  const [alice, bob] = await Promise.all([server.user('alice'), server.user('bob')]);
  const channelId = await server.channel();
  const net = new Network();
  const a = server.client(alice);
  const b = server.client(bob, { WebSocket: net.WebSocket });
  t.after(() => {
    a.close();
    b.close();
  });
  const rb = new Recorder(b);
  await Promise.all([a.connect(), b.connect()]);
  await Promise.all([a.join(channelId), b.join(channelId)]);
  for (let i = 1; i <= 3; i++) await a.send(channelId, `before ${i}`);
  await until('bob has the first three', () => rb.seqs(channelId).length === 3);

  // Bob is offline while 250 are sent; two of them are deleted meanwhile.
  net.blocked = true;
  net.cut();
  await until('bob is disconnected', () => b.state !== 'connected');
  const acks = await Promise.all(range(1, 250).map((i) => a.send(channelId, `gap ${i}`)));
  assert.deepStrictEqual(acks.map((r) => r.seq), range(4, 253));
  await a.delete(acks[99]!.messageId); // seq 103
  await a.delete(acks[100]!.messageId); // seq 104

  // Back online; live messages keep coming while bob pages.
  net.blocked = false;
  const live = (async () => {
    await until('bob reconnects', () => b.state === 'connected', 20_000);
    for (let i = 1; i <= 20; i++) await a.send(channelId, `live ${i}`);
  })();
  await live;
  await until('bob has every message', () => rb.seqs(channelId).at(-1) === 273, 20_000);
  await sleep(200);

  const expected = [...range(1, 102), ...range(105, 273)];
  assertStrictlyIncreasing(rb.seqs(channelId), 'bob');
  assert.deepStrictEqual(rb.seqs(channelId), expected, 'bob got every message once, in seq order');
  assert.equal(rb.texts(channelId)[3], 'gap 1');
  assert.equal(rb.texts(channelId).at(-1), 'live 20');
  const recovered = rb.events.filter((e) => e.name === 'recovered').map((e) => e.args[0]) as { lastSeq: number; paged: boolean }[];
  assert.equal(recovered.length, 1);
  assert.equal(recovered[0]!.paged, true, 'the server answered recovered: false and the client paged');
  assert.ok(recovered[0]!.lastSeq >= 253);
});

test('a short outage is replayed by the server (recovered: true)', async (t) => {
  const server = await Server.start({ COURIER_RECOVERY_MAX_REPLAY: '50' });
  t.after(() => server.stop());
  const [alice, bob] = await Promise.all([server.user('alice'), server.user('bob')]);
  const channelId = await server.channel();
  const net = new Network();
  const a = server.client(alice);
  const b = server.client(bob, { WebSocket: net.WebSocket });
  t.after(() => {
    a.close();
    b.close();
  });
  const rb = new Recorder(b);
  await Promise.all([a.connect(), b.connect()]);
  await Promise.all([a.join(channelId), b.join(channelId)]);
  await a.send(channelId, 'one');
  await until('bob has one', () => rb.seqs(channelId).length === 1);
  net.blocked = true;
  net.cut();
  await until('bob is disconnected', () => b.state !== 'connected');
  await Promise.all(range(2, 31).map((i) => a.send(channelId, `m ${i}`)));
  net.blocked = false;
  await until('bob has all 31', () => rb.seqs(channelId).length === 31, 20_000);
  await sleep(200);
  assert.deepStrictEqual(rb.seqs(channelId), range(1, 31));
  const recovered = rb.events.filter((e) => e.name === 'recovered').map((e) => e.args[0]) as { lastSeq: number; paged: boolean }[];
  assert.deepStrictEqual(recovered, [{ channelId, lastSeq: 31, paged: false }]);
});

test('a socket gone silent is found dead by the heartbeat and replaced; a send whose ack was lost completes once', async (t) => {
  const server = await Server.start({ COURIER_HEARTBEAT_MS: '500', COURIER_IDLE_TIMEOUT_MS: '60000' });
  t.after(() => server.stop());
  const [alice, bob] = await Promise.all([server.user('alice'), server.user('bob')]);
  const channelId = await server.channel();
  const net = new Network();
  const a = server.client(alice);
  const b = server.client(bob, { WebSocket: net.WebSocket, heartbeatMarginMs: 300 });
  t.after(() => {
    a.close();
    b.close();
  });
  const rb = new Recorder(b);
  await Promise.all([a.connect(), b.connect()]);
  await Promise.all([a.join(channelId), b.join(channelId)]);
  assert.equal(net.connects, 1);

  // Nothing from the server reaches bob: his send is committed, its ack lost.
  net.muted = true;
  net.blocked = true;
  const started = Date.now();
  const sent = b.send(channelId, 'from bob');
  await a.send(channelId, 'from alice');
  await until('bob notices the dead socket', () => rb.count('disconnected') >= 1, 5_000);
  const noticedAfter = Date.now() - started;
  net.muted = false;
  net.blocked = false;
  const r = await sent;
  assert.equal(r.duplicate, true, 'the resend was answered duplicate: the first one was committed');
  await until('bob has both', () => rb.seqs(channelId).length === 2, 10_000);
  await sleep(200);
  assert.deepStrictEqual(rb.texts(channelId).sort(), ['from alice', 'from bob']);
  assertStrictlyIncreasing(rb.seqs(channelId), 'bob');
  assert.ok(noticedAfter < 2_500, `found dead within heartbeat + margin (${noticedAfter} ms)`);
  assert.ok(net.connects >= 2);
});
