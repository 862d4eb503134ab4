// The SDK's frames against the Rust protocol's (issue 33).
//
// test/fixtures/frames.json holds every frame of docs/protocol.md as
// courier_protocol encodes it, in JSON and MessagePack (made and kept fresh
// by tests/sdk_frames.rs). Here:
// - every server frame is decoded by the SDK from both encodings into its
//   typed form, which must say exactly what the wire said;
// - every client frame, written below as the SDK's typed ClientFrame, must
//   equal the Rust encoding field for field once the SDK encodes it, in both
//   encodings;
// - with COURIER_FRAMES_OUT set (tests/sdk_typescript.rs sets it), the SDK's
//   encodings and readings are written there, and the Rust test decodes them
//   with courier_protocol: a mismatch fails in either direction.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { decode as msgpackDecode } from '@msgpack/msgpack';
import { decodeServer, encodeClient, type ClientFrame, type ServerFrame } from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixturePath = path.resolve(here, '../../test/fixtures/frames.json');

interface Entry {
  name: string;
  json: Record<string, unknown>;
  msgpack: string;
}
const fixture = JSON.parse(readFileSync(fixturePath, 'utf8')) as { client: Entry[]; server: Entry[] };

function fromHex(h: string): Uint8Array {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** A typed server frame back in its wire form (what the decoder read, field by field). */
function toWire(f: ServerFrame): Record<string, unknown> {
  switch (f.type) {
    case 'ack': {
      const base: Record<string, unknown> = { type: 'ack' };
      if (f.ref !== undefined) base.ref = f.ref;
      if (f.result === 'sent') return { ...base, ...f.sent };
      if (f.result === 'channel') return { ...base, channel: f.channel };
      return base;
    }
    case 'authentication_response': {
      const { ...rest } = f as unknown as Record<string, unknown>;
      return rest;
    }
    default:
      return { ...(f as unknown as Record<string, unknown>) };
  }
}

const ALICE = '0b5e6c1a-3f1d-4c2a-9e51-7a0d2f4b8c01';
const BOB = '0b5e6c1a-3f1d-4c2a-9e51-7a0d2f4b8c02';
const WARD = 'c4a1e0f2-6b7d-4e38-a9c5-1d2e3f405060';
const MSG = '01890a5d-ac96-774b-bcce-b302099a8057';
const FILE = '5f0c2b7e-1d3a-4e6f-8a9b-0c1d2e3f4a5b';
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
void ALICE;

/** The client frames of the fixture, as the SDK builds them (checked by tsc against ClientFrame). */
const clientFrames: Record<string, ClientFrame> = {
  authenticate: { type: 'authenticate', ref: 1, token: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln' },
  'authenticate compact, string ref': { type: 'authenticate', ref: 'auth-1', token: 't', frames: 'compact' },
  join_channel: { type: 'join_channel', ref: 2, channelId: WARD, sinceSeq: undefined },
  'join_channel sinceSeq': { type: 'join_channel', ref: 2, channelId: WARD, sinceSeq: MAX_SAFE },
  leave_channel: { type: 'leave_channel', ref: 3, channelId: WARD },
  send_message: { type: 'send_message', ref: 4, channelId: WARD, text: 'hi', clientMsgId: undefined, replyTo: undefined, ttlSeconds: undefined },
  'send_message every field': {
    type: 'send_message',
    ref: -MAX_SAFE,
    channelId: WARD,
    text: 'Bed 4 needs a fluid check <b>now</b> \u{1F489} \u0000end',
    clientMsgId: 'a1b2c3d4-0000-4000-8000-000000000001',
    containsPHI: true,
    replyTo: MSG,
    ttlSeconds: 4294967295,
    attachments: [FILE],
  },
  edit_message: { type: 'edit_message', ref: 5, messageId: MSG, text: 'edited' },
  delete_message: { type: 'delete_message', ref: 6, messageId: MSG },
  typing_indicator: { type: 'typing_indicator', channelId: WARD, isTyping: true },
  'typing_indicator stopped': { type: 'typing_indicator', channelId: WARD, isTyping: false },
  'read_receipt seq': { type: 'read_receipt', ref: 8, channelId: WARD, seq: 42 },
  'read_receipt messageId': { type: 'read_receipt', ref: 9, channelId: WARD, messageId: MSG },
  fetch_history: { type: 'fetch_history', ref: 10, channelId: WARD, beforeSeq: undefined, limit: undefined },
  'fetch_history beforeSeq limit': { type: 'fetch_history', ref: 10, channelId: WARD, beforeSeq: 141, limit: 100 },
  add_reaction: { type: 'add_reaction', ref: 11, messageId: MSG, reaction: '\u{1F44D}' },
  remove_reaction: { type: 'remove_reaction', ref: 12, messageId: MSG, reaction: '\u{1F44D}' },
  open_direct: { type: 'open_direct', ref: 13, userId: BOB },
  'set_status away': { type: 'set_status', ref: 14, status: 'away' },
  'set_status online': { type: 'set_status', ref: 14, status: 'online' },
  flag_message: { type: 'flag_message', ref: 16, messageId: MSG, reason: 'Patient name in a public channel' },
  unflag_message: { type: 'unflag_message', ref: 17, messageId: MSG },
  ping: { type: 'ping', ref: 15 },
  heartbeat: { type: 'heartbeat' },
};

const out: { client: { name: string; json: string; msgpack: string }[]; server: { name: string; wire: Record<string, unknown> }[] } = {
  client: [],
  server: [],
};

test('every server frame of the Rust protocol decodes into its typed form, from JSON and from MessagePack', () => {
  assert.ok(fixture.server.length >= 30, 'the fixture lists the server frames');
  const types = new Set<string>();
  for (const e of fixture.server) {
    const fromJson = decodeServer(JSON.stringify(e.json));
    const fromMsgpack = decodeServer(fromHex(e.msgpack));
    assert.deepStrictEqual(fromMsgpack, fromJson, `${e.name}: MessagePack and JSON read the same`);
    assert.deepStrictEqual(toWire(fromJson), e.json, `${e.name}: the typed form says what the wire said`);
    types.add(fromJson.type);
    out.server.push({ name: e.name, wire: toWire(fromMsgpack) });
  }
  assert.deepStrictEqual(
    [...types].sort(),
    ['ack', 'authentication_response', 'error', 'history', 'message_deleted', 'message_flagged', 'message_status', 'message_updated', 'new_message', 'notification', 'pong', 'presence', 'reaction_updated', 'read_receipt', 'recovered', 'system_event', 'typing'],
  );
});

test('typed forms: ack results, defaults and 2^53 - 1', () => {
  const byName = new Map(fixture.server.map((e) => [e.name, decodeServer(fromHex(e.msgpack))]));
  const dup = byName.get('ack send_message duplicate');
  assert.ok(dup?.type === 'ack' && dup.result === 'sent');
  assert.deepStrictEqual(dup.sent, { messageId: MSG, seq: MAX_SAFE, timestamp: 1760000000123, duplicate: true });
  assert.equal(dup.ref, 'send-7');
  const join = byName.get('ack join_channel');
  assert.ok(join?.type === 'ack' && join.result === 'channel');
  assert.equal(join.channel.recovered, true);
  assert.deepStrictEqual(join.channel.online, [ALICE, BOB]);
  const plain = byName.get('new_message');
  assert.ok(plain?.type === 'new_message');
  assert.equal(plain.data.containsPHI, false);
  assert.equal('replyTo' in plain.data, false);
  const full = byName.get('new_message every field');
  assert.ok(full?.type === 'new_message');
  assert.equal(full.data.seq, MAX_SAFE);
  assert.equal(full.data.text, 'Bed 4 <script>alert(1)</script> \u{1F489}');
  const flags = byName.get('history with flags');
  assert.ok(flags?.type === 'history');
  assert.equal(flags.messages[0]!.flagged, false);
  assert.equal('flagReason' in flags.messages[0]!, false);
  assert.equal(flags.messages[1]!.flagReason, 'Patient name in a public channel');
  assert.equal('flagged' in plain.data, false);
  const archived = byName.get('ack join_channel archived');
  assert.ok(archived?.type === 'ack' && archived.result === 'channel');
  assert.equal(archived.channel.archived, true);
  assert.equal('archived' in join.channel, false);
  const cleared = byName.get('message_flagged cleared');
  assert.ok(cleared?.type === 'message_flagged');
  assert.equal(cleared.flagged, false);
  assert.equal('flagReason' in cleared, false);
  const rl = byName.get('error rate_limited');
  assert.ok(rl?.type === 'error');
  assert.equal(rl.retryAfterMs, 2400);
  const fail = byName.get('authentication_response failure');
  assert.ok(fail?.type === 'authentication_response' && !fail.success);
  assert.equal(fail.error.code, 'auth_failed');
  // null is absent; unknown keys are ignored.
  const lenient = decodeServer(JSON.stringify({ ...(fixture.server.find((e) => e.name === 'new_message')!.json), extra: 1 }));
  assert.deepStrictEqual(lenient, plain);
  const nulls = decodeServer(JSON.stringify({ type: 'new_message', data: { ...(plain.data as object), containsPHI: null, replyTo: null, editedAt: null } }));
  assert.deepStrictEqual(nulls, plain);
  assert.throws(() => decodeServer(JSON.stringify({ type: 'new_message', data: { ...(plain.data as object), seq: '42' } })), /seq/);
  assert.throws(() => decodeServer(JSON.stringify({ type: 'no_such_frame' })), (e: any) => e.code === 'invalid_frame');
});

test('every client frame the SDK encodes equals the Rust encoding, in JSON and MessagePack', () => {
  assert.deepStrictEqual(Object.keys(clientFrames).sort(), fixture.client.map((e) => e.name).sort(), 'the same frames as the fixture');
  for (const e of fixture.client) {
    const frame = clientFrames[e.name]!;
    const json = encodeClient(frame, 'json');
    const mp = encodeClient(frame, 'msgpack');
    assert.equal(typeof json, 'string');
    assert.ok(mp instanceof Uint8Array);
    assert.deepStrictEqual(JSON.parse(json as string), e.json, `${e.name} (JSON)`);
    assert.deepStrictEqual(msgpackDecode(mp as Uint8Array), e.json, `${e.name} (MessagePack)`);
    out.client.push({ name: e.name, json: json as string, msgpack: toHex(mp as Uint8Array) });
  }
});

test('the encodings are handed to the Rust test', { skip: process.env.COURIER_FRAMES_OUT === undefined }, () => {
  assert.equal(out.client.length, fixture.client.length);
  assert.equal(out.server.length, fixture.server.length);
  writeFileSync(process.env.COURIER_FRAMES_OUT!, JSON.stringify(out, null, 1));
});
