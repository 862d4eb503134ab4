// SIGKILL mid-conversation, restart on the same port and data directory:
// every message the apps sent reaches each app once, in seq order, and every
// send's promise settles once, with its ack.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Recorder, Server, assertStrictlyIncreasing, sleep, until } from './server.js';
import type { CourierClient, SendResult } from '../src/index.js';

const PER_CLIENT = 60;
const IN_FLIGHT = 4;

interface Outcome {
  text: string;
  results: SendResult[];
  errors: unknown[];
}

/** Sends PER_CLIENT messages, IN_FLIGHT at a time, recording how each promise settled. */
async function converse(client: CourierClient, channelId: string, who: string, outcomes: Outcome[], acked: () => void): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < PER_CLIENT) {
      const o: Outcome = { text: `${who} #${next++}`, results: [], errors: [] };
      outcomes.push(o);
      await client.send(channelId, o.text).then(
        (r) => {
          o.results.push(r);
          acked();
        },
        (e) => o.errors.push(e),
      );
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
}

test('SIGKILL and restart mid-conversation: nothing lost, nothing doubled, every send settled once', async (t) => {
  const server = await Server.start();
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

  const outcomes: Outcome[] = [];
  let acks = 0;
  let inFlightAtKill = -1;
  let kill!: () => void;
  const killNow = new Promise<void>((r) => (kill = r));
  const acked = () => {
    // The 20th ack: the other lanes' sends are on the wire right now.
    if (++acks === 20) {
      inFlightAtKill = outcomes.filter((o) => o.results.length === 0 && o.errors.length === 0).length;
      server.child?.kill('SIGKILL');
      kill();
    }
  };
  const restarted = (async () => {
    await killNow;
    await server.kill();
    await sleep(300); // sends queue up meanwhile
    await server.spawn();
  })();
  await Promise.all([converse(a, channelId, 'alice', outcomes, acked), converse(b, channelId, 'bob', outcomes, acked), restarted]);

  assert.ok(inFlightAtKill > 0, `sends were in flight at the kill (${inFlightAtKill})`);
  assert.ok(ra.count('disconnected') >= 1 && rb.count('disconnected') >= 1, 'both clients saw the socket go');
  assert.equal(outcomes.length, 2 * PER_CLIENT);
  for (const o of outcomes) {
    assert.deepStrictEqual(o.errors, [], `${o.text} did not fail`);
    assert.equal(o.results.length, 1, `${o.text} resolved once`);
  }
  const seqOf = new Map(outcomes.map((o) => [o.text, o.results[0]!.seq]));
  assert.equal(new Set(seqOf.values()).size, 2 * PER_CLIENT, 'every message has its own seq');
  const expected = [...seqOf.entries()].sort((x, y) => x[1] - y[1]);

  for (const [who, r] of [['alice', ra], ['bob', rb]] as const) {
    await until(`${who} has every message`, () => r.seqs(channelId).length >= expected.length, 20_000);
    await sleep(200); // a late duplicate would show now
    assertStrictlyIncreasing(r.seqs(channelId), who);
    assert.deepStrictEqual(
      r.messages.map((m) => [m.seq, m.text]),
      expected.map(([text, seq]) => [seq, text]),
      `${who} got every message once, in seq order`,
    );
  }

  // The store holds each once too: the resends were answered duplicate.
  const stored: number[] = [];
  let before: number | undefined;
  for (;;) {
    const page = await a.history(channelId, { limit: 100, ...(before === undefined ? {} : { beforeSeq: before }) });
    stored.unshift(...page.messages.map((m) => m.seq));
    if (!page.hasMore || page.messages.length === 0) break;
    before = page.messages[0]!.seq;
  }
  assert.deepStrictEqual(stored, expected.map(([, seq]) => seq));
  assert.equal(a.state, 'connected');
});
