// The wire frames of docs/protocol.md as TypeScript types, with a checking
// decoder for server frames and an encoder for client frames.
//
// The decoder turns a decoded map (from JSON or MessagePack) into its typed
// form: every required field checked, `null` read as absent, defaults filled
// (`containsPHI: false`), unknown keys ignored (the protocol lets the server
// add fields). `test/frames.test.ts` runs it over every frame the Rust
// protocol crate produces (test/fixtures/frames.json, made by
// tests/sdk_frames.rs), and hands this encoder's output back to Rust.

import { CourierError } from './errors.js';

/** A request's `ref`: a string, or an integer of magnitude below 2^53. */
export type Ref = number | string;

export type Role = 'super_admin' | 'admin' | 'moderator' | 'user' | (string & {});
export type ChannelKind = 'public' | 'private' | 'direct' | 'broadcast' | (string & {});
export type UserStatus = 'online' | 'away';
export type PresenceStatus = 'online' | 'away' | 'offline' | (string & {});

export interface User {
  id: string;
  username: string;
  role: Role;
}

/** A message, as pushed (`new_message`, `message_updated`) and paged (`history`). */
export interface Message {
  id: string;
  channelId: string;
  seq: number;
  senderId: string;
  /** The sender's username. */
  sender: string;
  text: string;
  timestamp: number;
  containsPHI: boolean;
  replyTo?: string;
  editedAt?: number;
  expiresAt?: number;
  /** (addition) Only for users who may see flags, in `history` pages: whether a moderator flagged it. */
  flagged?: boolean;
  flagReason?: string;
  flaggedBy?: string;
  flaggedAt?: number;
  /** (addition) `image` or `file` when it carries attachments; absent for text. */
  kind?: 'text' | 'image' | 'file' | 'system';
  /** (addition) Its files; fetch one with `GET /api/files/{id}/content`. */
  attachments?: Attachment[];
  /** (addition) The patient the message itself concerns (`Patient/123`, `system|value`). */
  patientRef?: string;
}

/** (addition) One file of a message. */
export interface Attachment {
  id: string;
  /** The uploader's file name, sanitized. */
  name: string;
  /** The MIME type sniffed from the content. */
  type: string;
  size: number;
}

/** The `channel` object of a `join_channel` or `open_direct` ack. */
export interface ChannelView {
  id: string;
  name: string;
  kind: ChannelKind;
  lastSeq: number;
  lastReadSeq: number;
  unread: number;
  recovered: boolean;
  online: string[];
  /** (addition) Present and `true` when the channel is archived: readable, nothing new is posted. */
  archived?: boolean;
  /** (addition) The patient the channel concerns. */
  patientRef?: string;
}

/** The ack of `send_message`. */
export interface SendResult {
  messageId: string;
  seq: number;
  timestamp: number;
  /** `true` when the `clientMsgId` matched an earlier send (a resend). */
  duplicate: boolean;
}

/** A `fetch_history` page, ascending `seq`. */
export interface HistoryPage {
  messages: Message[];
  hasMore: boolean;
}

export interface ErrorBody {
  code: string;
  message: string;
}

export interface AuthSuccess {
  user: User;
  sessionId: string;
  serverTime: number;
  heartbeatMs: number;
  /** `"compact"` when the connection asked for compact frames (never by this SDK). */
  frames?: string;
}

// ---------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------

export interface AuthenticateFrame { type: 'authenticate'; ref?: Ref; token: string; frames?: 'compact' }
export interface JoinChannelFrame { type: 'join_channel'; ref?: Ref; channelId: string; sinceSeq?: number }
export interface LeaveChannelFrame { type: 'leave_channel'; ref?: Ref; channelId: string }
export interface SendMessageFrame {
  type: 'send_message';
  ref?: Ref;
  channelId: string;
  text: string;
  clientMsgId?: string;
  containsPHI?: boolean;
  replyTo?: string;
  ttlSeconds?: number;
  /** (addition) Ids of files uploaded to this channel (`POST /api/channels/{id}/attachments`). */
  attachments?: string[];
  /** (addition) The patient the message concerns (`Patient/123`, `system|value`). */
  patientRef?: string;
}
export interface EditMessageFrame { type: 'edit_message'; ref?: Ref; messageId: string; text: string }
export interface DeleteMessageFrame { type: 'delete_message'; ref?: Ref; messageId: string }
export interface TypingIndicatorFrame { type: 'typing_indicator'; ref?: Ref; channelId: string; isTyping?: boolean }
export interface ReadReceiptFrame { type: 'read_receipt'; ref?: Ref; channelId: string; seq?: number; messageId?: string }
export interface FetchHistoryFrame { type: 'fetch_history'; ref?: Ref; channelId: string; beforeSeq?: number; limit?: number }
export interface AddReactionFrame { type: 'add_reaction'; ref?: Ref; messageId: string; reaction: string }
export interface RemoveReactionFrame { type: 'remove_reaction'; ref?: Ref; messageId: string; reaction: string }
export interface OpenDirectFrame { type: 'open_direct'; ref?: Ref; userId: string }
export interface SetStatusFrame { type: 'set_status'; ref?: Ref; status: UserStatus }
export interface FlagMessageFrame { type: 'flag_message'; ref?: Ref; messageId: string; reason: string }
export interface UnflagMessageFrame { type: 'unflag_message'; ref?: Ref; messageId: string }
export interface PingFrame { type: 'ping'; ref?: Ref }
export interface HeartbeatFrame { type: 'heartbeat'; ref?: Ref }

/** Every request of docs/protocol.md section 5. */
export type ClientFrame =
  | AuthenticateFrame
  | JoinChannelFrame
  | LeaveChannelFrame
  | SendMessageFrame
  | EditMessageFrame
  | DeleteMessageFrame
  | TypingIndicatorFrame
  | ReadReceiptFrame
  | FetchHistoryFrame
  | AddReactionFrame
  | RemoveReactionFrame
  | OpenDirectFrame
  | SetStatusFrame
  | FlagMessageFrame
  | UnflagMessageFrame
  | PingFrame
  | HeartbeatFrame;

// ---------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------

/** `ack`: `result` says which fields it carried. */
export type AckFrame =
  | { type: 'ack'; ref?: Ref; result: 'done' }
  | { type: 'ack'; ref?: Ref; result: 'sent'; sent: SendResult }
  | { type: 'ack'; ref?: Ref; result: 'channel'; channel: ChannelView };
export interface ErrorFrame { type: 'error'; ref?: Ref; code: string; message: string; retryAfterMs?: number }
export type AuthenticationResponseFrame =
  | ({ type: 'authentication_response'; ref?: Ref; success: true } & AuthSuccess)
  | { type: 'authentication_response'; ref?: Ref; success: false; error: ErrorBody };
export interface PongFrame { type: 'pong'; ref?: Ref; serverTime: number }
export interface HistoryFrame { type: 'history'; ref?: Ref; channelId: string; messages: Message[]; hasMore: boolean }
export interface NewMessageFrame { type: 'new_message'; data: Message }
export interface MessageUpdatedFrame { type: 'message_updated'; data: Message }
export interface MessageDeletedData { messageId: string; channelId: string; seq: number }
export interface MessageDeletedFrame { type: 'message_deleted'; data: MessageDeletedData }
export interface TypingFrame { type: 'typing'; channelId: string; userId: string; isTyping: boolean }
export interface ReadReceiptPushFrame { type: 'read_receipt'; channelId: string; userId: string; seq: number }
export interface ReactionUpdatedFrame { type: 'reaction_updated'; channelId: string; messageId: string; reactions: Record<string, number> }
export interface PresenceFrame { type: 'presence'; userId: string; status: PresenceStatus; lastSeen: number }
export interface SystemEventFrame { type: 'system_event'; eventType: string; data?: unknown }
export interface NotificationFrame { type: 'notification'; data: unknown }
export interface RecoveredFrame { type: 'recovered'; channelId: string; lastSeq: number }
/** (addition) A message was flagged or unflagged; only to users who may see flags. */
export interface MessageFlaggedFrame {
  type: 'message_flagged';
  channelId: string;
  messageId: string;
  seq: number;
  flagged: boolean;
  flagReason?: string;
  flaggedBy?: string;
  flaggedAt?: number;
}
export interface MessageStatusFrame { type: 'message_status'; channelId: string; userId: string; seq: number; status: 'delivered' | 'read' | (string & {}) }

/** Every answer and push of docs/protocol.md section 6 but the compact `m` (never requested). */
export type ServerFrame =
  | AckFrame
  | ErrorFrame
  | AuthenticationResponseFrame
  | PongFrame
  | HistoryFrame
  | NewMessageFrame
  | MessageUpdatedFrame
  | MessageDeletedFrame
  | TypingFrame
  | ReadReceiptPushFrame
  | ReactionUpdatedFrame
  | PresenceFrame
  | SystemEventFrame
  | NotificationFrame
  | RecoveredFrame
  | MessageStatusFrame
  | MessageFlaggedFrame;

// ---------------------------------------------------------------------------
// Decoding server frames
// ---------------------------------------------------------------------------

type Obj = Record<string, unknown>;

function bad(what: string): never {
  throw new CourierError('invalid_frame', what);
}

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function obj(v: unknown, what: string): Obj {
  if (!isObj(v)) bad(`${what}: expected a map`);
  return v;
}

function str(o: Obj, key: string): string {
  const v = o[key];
  if (typeof v !== 'string') bad(`field \`${key}\`: expected a string`);
  return v;
}

function optStr(o: Obj, key: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') bad(`field \`${key}\`: expected a string`);
  return v;
}

function toNumber(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return undefined;
}

function int(o: Obj, key: string): number {
  const n = toNumber(o[key]);
  if (n === undefined) bad(`field \`${key}\`: expected an integer`);
  return n;
}

function optInt(o: Obj, key: string): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  return int(o, key);
}

function bool(o: Obj, key: string): boolean {
  const v = o[key];
  if (typeof v !== 'boolean') bad(`field \`${key}\`: expected a boolean`);
  return v;
}

function optBool(o: Obj, key: string, dflt: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  return bool(o, key);
}

function ref(o: Obj): Ref | undefined {
  const v = o.ref;
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  const n = toNumber(v);
  if (n === undefined) bad('field `ref`: expected a string or an integer');
  return n;
}

/** Sets `key` on `target` only when `value` is defined (keeps decoded objects free of `undefined` keys). */
function put<T extends object, K extends keyof T>(target: T, key: K, value: T[K] | undefined): void {
  if (value !== undefined) target[key] = value;
}

function withRef<T extends object>(frame: T, r: Ref | undefined): T & { ref?: Ref } {
  const out = frame as T & { ref?: Ref };
  if (r !== undefined) out.ref = r;
  return out;
}

export function decodeUser(v: unknown): User {
  const o = obj(v, 'user');
  return { id: str(o, 'id'), username: str(o, 'username'), role: str(o, 'role') };
}

export function decodeMessage(v: unknown): Message {
  const o = obj(v, 'message');
  const m: Message = {
    id: str(o, 'id'),
    channelId: str(o, 'channelId'),
    seq: int(o, 'seq'),
    senderId: str(o, 'senderId'),
    sender: str(o, 'sender'),
    text: str(o, 'text'),
    timestamp: int(o, 'timestamp'),
    containsPHI: optBool(o, 'containsPHI', false),
  };
  put(m, 'replyTo', optStr(o, 'replyTo'));
  put(m, 'editedAt', optInt(o, 'editedAt'));
  put(m, 'expiresAt', optInt(o, 'expiresAt'));
  const flagged = o.flagged === undefined || o.flagged === null ? undefined : bool(o, 'flagged');
  put(m, 'flagged', flagged);
  put(m, 'flagReason', optStr(o, 'flagReason'));
  put(m, 'flaggedBy', optStr(o, 'flaggedBy'));
  put(m, 'flaggedAt', optInt(o, 'flaggedAt'));
  const kind = optStr(o, 'kind');
  if (kind !== undefined && kind !== 'text') {
    if (kind !== 'image' && kind !== 'file' && kind !== 'system') bad('field `kind`: unknown message kind');
    m.kind = kind;
  }
  if (o.attachments !== undefined && o.attachments !== null) {
    if (!Array.isArray(o.attachments)) bad('field `attachments`: expected a list');
    m.attachments = o.attachments.map(decodeAttachment);
  }
  put(m, 'patientRef', optStr(o, 'patientRef'));
  return m;
}

export function decodeAttachment(v: unknown): Attachment {
  const o = obj(v, 'attachment');
  return { id: str(o, 'id'), name: str(o, 'name'), type: str(o, 'type'), size: int(o, 'size') };
}

export function decodeChannel(v: unknown): ChannelView {
  const o = obj(v, 'channel');
  const online = o.online ?? [];
  if (!Array.isArray(online) || online.some((u) => typeof u !== 'string')) bad('field `online`: expected a list of ids');
  const view = {
    id: str(o, 'id'),
    name: str(o, 'name'),
    kind: str(o, 'kind'),
    lastSeq: int(o, 'lastSeq'),
    lastReadSeq: int(o, 'lastReadSeq'),
    unread: int(o, 'unread'),
    recovered: optBool(o, 'recovered', false),
    online: online as string[],
  } as ChannelView;
  if (optBool(o, 'archived', false)) view.archived = true;
  const patientRef = optStr(o, 'patientRef');
  if (patientRef !== undefined) view.patientRef = patientRef;
  return view;
}

function decodeMessages(v: unknown): Message[] {
  if (!Array.isArray(v)) bad('field `messages`: expected a list');
  return v.map(decodeMessage);
}

/** Checks a decoded map and returns its typed form; throws CourierError('invalid_frame'). */
export function decodeServerFrame(value: unknown): ServerFrame {
  const o = obj(value, 'frame');
  const type = str(o, 'type');
  switch (type) {
    case 'ack': {
      const r = ref(o);
      if (o.channel !== undefined && o.channel !== null) {
        return withRef({ type: 'ack', result: 'channel', channel: decodeChannel(o.channel) } as const, r);
      }
      if (o.messageId !== undefined && o.messageId !== null) {
        const sent: SendResult = {
          messageId: str(o, 'messageId'),
          seq: int(o, 'seq'),
          timestamp: int(o, 'timestamp'),
          duplicate: optBool(o, 'duplicate', false),
        };
        return withRef({ type: 'ack', result: 'sent', sent } as const, r);
      }
      return withRef({ type: 'ack', result: 'done' } as const, r);
    }
    case 'error': {
      const f: ErrorFrame = { type: 'error', code: str(o, 'code'), message: optStr(o, 'message') ?? '' };
      put(f, 'retryAfterMs', optInt(o, 'retryAfterMs'));
      return withRef(f, ref(o));
    }
    case 'authentication_response': {
      const r = ref(o);
      if (bool(o, 'success')) {
        const f = {
          type: 'authentication_response' as const,
          success: true as const,
          user: decodeUser(o.user),
          sessionId: str(o, 'sessionId'),
          serverTime: int(o, 'serverTime'),
          heartbeatMs: int(o, 'heartbeatMs'),
        } as AuthenticationResponseFrame & AuthSuccess;
        put(f, 'frames', optStr(o, 'frames'));
        return withRef(f, r);
      }
      const e = obj(o.error, 'error');
      return withRef(
        { type: 'authentication_response', success: false, error: { code: str(e, 'code'), message: optStr(e, 'message') ?? '' } } as const,
        r,
      );
    }
    case 'pong':
      return withRef({ type: 'pong', serverTime: int(o, 'serverTime') } as const, ref(o));
    case 'history':
      return withRef(
        { type: 'history', channelId: str(o, 'channelId'), messages: decodeMessages(o.messages), hasMore: optBool(o, 'hasMore', false) } as const,
        ref(o),
      );
    case 'new_message':
      return { type: 'new_message', data: decodeMessage(o.data) };
    case 'message_updated':
      return { type: 'message_updated', data: decodeMessage(o.data) };
    case 'message_deleted': {
      const d = obj(o.data, 'data');
      return { type: 'message_deleted', data: { messageId: str(d, 'messageId'), channelId: str(d, 'channelId'), seq: int(d, 'seq') } };
    }
    case 'typing':
      return { type: 'typing', channelId: str(o, 'channelId'), userId: str(o, 'userId'), isTyping: optBool(o, 'isTyping', true) };
    case 'read_receipt':
      return { type: 'read_receipt', channelId: str(o, 'channelId'), userId: str(o, 'userId'), seq: int(o, 'seq') };
    case 'reaction_updated': {
      const rs = obj(o.reactions ?? {}, 'reactions');
      const reactions: Record<string, number> = {};
      for (const [k, v] of Object.entries(rs)) {
        const n = toNumber(v);
        if (n === undefined) bad('field `reactions`: expected counts');
        reactions[k] = n;
      }
      return { type: 'reaction_updated', channelId: str(o, 'channelId'), messageId: str(o, 'messageId'), reactions };
    }
    case 'presence':
      return { type: 'presence', userId: str(o, 'userId'), status: str(o, 'status'), lastSeen: int(o, 'lastSeen') };
    case 'system_event': {
      const f: SystemEventFrame = { type: 'system_event', eventType: str(o, 'eventType') };
      if (o.data !== undefined && o.data !== null) f.data = o.data;
      return f;
    }
    case 'notification':
      return { type: 'notification', data: o.data ?? null };
    case 'recovered':
      return { type: 'recovered', channelId: str(o, 'channelId'), lastSeq: int(o, 'lastSeq') };
    case 'message_status':
      return { type: 'message_status', channelId: str(o, 'channelId'), userId: str(o, 'userId'), seq: int(o, 'seq'), status: str(o, 'status') };
    case 'message_flagged': {
      const f: MessageFlaggedFrame = {
        type: 'message_flagged',
        channelId: str(o, 'channelId'),
        messageId: str(o, 'messageId'),
        seq: int(o, 'seq'),
        flagged: bool(o, 'flagged'),
      };
      put(f, 'flagReason', optStr(o, 'flagReason'));
      put(f, 'flaggedBy', optStr(o, 'flaggedBy'));
      put(f, 'flaggedAt', optInt(o, 'flaggedAt'));
      return f;
    }
    default:
      bad(`unknown frame type \`${type}\``);
  }
}

// ---------------------------------------------------------------------------
// Encoding client frames
// ---------------------------------------------------------------------------

/** The wire map of a client frame: the same fields, without the absent ones. */
export function clientFrameToWire(frame: ClientFrame): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(frame)) {
    if (v !== undefined) out[k] = v;
  }
  return out;
}
