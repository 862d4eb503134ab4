// Frames to bytes and back: MessagePack in binary WebSocket frames (the
// default) or JSON in text frames (docs/protocol.md section 1).

import { decode as msgpackDecode, encode as msgpackEncode } from '@msgpack/msgpack';
import { CourierError } from './errors.js';
import { clientFrameToWire, decodeServerFrame, type ClientFrame, type ServerFrame } from './frames.js';

export type Encoding = 'msgpack' | 'json';

/** What goes on the socket: a string (a text frame) or bytes (a binary frame). */
export type WireData = string | Uint8Array;

/** Encodes a client frame in `encoding`. */
export function encodeClient(frame: ClientFrame, encoding: Encoding): WireData {
  const wire = clientFrameToWire(frame);
  return encoding === 'json' ? JSON.stringify(wire) : msgpackEncode(wire, { ignoreUndefined: true });
}

/** Decodes one WebSocket message (a string, or bytes in any of the forms sockets deliver) into a typed server frame. */
export function decodeServer(data: unknown): ServerFrame {
  return decodeServerFrame(decodeRaw(data));
}

/** Decodes one WebSocket message into its map, without checking it. */
export function decodeRaw(data: unknown): unknown {
  try {
    if (typeof data === 'string') return JSON.parse(data);
    if (data instanceof Uint8Array) return msgpackDecode(data);
    if (data instanceof ArrayBuffer) return msgpackDecode(new Uint8Array(data));
    if (ArrayBuffer.isView(data)) return msgpackDecode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  } catch (e) {
    throw new CourierError('invalid_frame', `undecodable frame: ${(e as Error).message}`);
  }
  throw new CourierError('invalid_frame', 'unexpected WebSocket message data');
}
