// @courier/client: Courier's TypeScript SDK (browsers and Node 20).
export { CourierClient } from './client.js';
export type {
  AuthInfo,
  ClientEvents,
  ClientOptions,
  ClientState,
  EventName,
  Handler,
  JoinOptions,
  SendOptions,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { CourierError } from './errors.js';
export { login, refreshSession, jwtExpiry, type Session, type FetchLike } from './rest.js';
export { backoffCeiling, backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
export { decodeServer, decodeRaw, encodeClient, type Encoding, type WireData } from './codec.js';
export { decodeServerFrame, decodeMessage, decodeChannel, decodeUser, clientFrameToWire } from './frames.js';
export type * from './frames.js';
