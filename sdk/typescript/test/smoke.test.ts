import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, until } from './server.js';
import type { Message } from '../src/index.js';

for (const encoding of ['msgpack', 'json'] as const) {
  test(`two clients chat over ${encoding}: join, send, typing, history, edit, react, markRead`, async () => {
    const server = await Server.start();
    try {
      const alice = await server.user('alice');
      const bob = await server.user('bob');
      const channelId = await server.channel();
      const a = server.client(alice, { encoding });
      const b = server.client(bob, { encoding });
      const got: Message[] = [];
      const typing: string[] = [];
      b.on('message', (m) => got.push(m));
      b.on('typing', (t) => typing.push(t.userId));
      await Promise.all([a.connect(), b.connect()]);
      assert.equal(a.state, 'connected');
      assert.equal(a.user?.id, alice.user.id);
      const va = await a.join(channelId);
      await b.join(channelId);
      assert.equal(va.id, channelId);
      assert.equal(va.lastSeq, 0);
      const r1 = await a.send(channelId, 'hello <b>bob</b>');
      assert.equal(r1.seq, 1);
      assert.equal(r1.duplicate, false);
      const r2 = await a.send(channelId, 'second', { clientMsgId: 'fixed-id-1' });
      const r3 = await a.send(channelId, 'second again', { clientMsgId: 'fixed-id-1' });
      assert.equal(r3.duplicate, true);
      assert.equal(r3.seq, r2.seq);
      await until('bob gets two messages', () => got.length === 2);
      assert.deepEqual(got.map((m) => [m.seq, m.text, m.sender]), [[1, 'hello <b>bob</b>', alice.user.username], [2, 'second', alice.user.username]]);
      a.typing(channelId);
      await until('bob sees alice typing', () => typing.includes(alice.user.id));
      const page = await b.history(channelId, { limit: 10 });
      assert.deepEqual(page.messages.map((m) => m.seq), [1, 2]);
      assert.equal(page.hasMore, false);
      const edited = new Promise<Message>((r) => b.on('messageUpdated', r));
      await a.edit(r1.messageId, 'edited');
      assert.equal((await edited).text, 'edited');
      const reacted = new Promise<Record<string, number>>((r) => b.on('reaction', (x) => r(x.reactions)));
      await b.react(r1.messageId, '👍');
      assert.deepEqual(await reacted, { '👍': 1 });
      await b.markRead(channelId, 2);
      const pong = await a.ping();
      assert.ok(pong.serverTime > 1_700_000_000_000);
      await assert.rejects(a.send('00000000-0000-4000-8000-000000000000', 'nowhere'), (e: any) => e.code === 'not_found' || e.code === 'forbidden');
      await assert.rejects(b.edit(r1.messageId, 'not yours'), (e: any) => e.code === 'forbidden');
      const channels = await a.api<any>('GET', '/api/channels');
      assert.ok(JSON.stringify(channels).includes(channelId));
      a.close();
      b.close();
      assert.equal(a.state, 'closed');
    } finally {
      await server.stop();
    }
  });
}
