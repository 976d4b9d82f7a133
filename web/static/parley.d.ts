// TypeScript declarations of parley.js, the browser SDK of the Parley
// protocol, version 1. They follow parley.js's JSDoc; docs/SDK.md describes
// the API, docs/PROTOCOL.md and docs/CALLS.md the frames behind it.

/** The WebSocket subprotocol of the Parley protocol, version 1. */
export const SUBPROTOCOL: 'parley.v1';

/** The codes of ParleyError: the protocol's, and the SDK's own. */
export type ParleyErrorCode =
  | 'bad_request'
  | 'bad_room'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'rate_limited'
  | 'too_large'
  | 'over_capacity'
  | 'draining'
  | 'internal'
  | 'timeout'
  | 'disconnected'
  | 'closed'
  | 'already_subscribed'
  | 'unsubscribed'
  | 'already_joined'
  | 'unavailable'
  | 'bad_frame'
  | 'ice_failed'
  | 'negotiation_failed'
  | (string & {});

/** An `error` frame of the protocol. */
export interface ErrorFrame {
  type: 'error';
  id?: string;
  code: string;
  message: string;
}

/**
 * An error from the node (`code` is the protocol's error code) or the SDK.
 * explain(err) says what it means in a sentence.
 */
export class ParleyError extends Error {
  constructor(code: ParleyErrorCode, message?: string, frame?: ErrorFrame);
  name: 'ParleyError';
  code: ParleyErrorCode;
  /** The node's error frame, when there is one. */
  frame?: ErrorFrame;
  /** The room of a refused subscribe or renewal. */
  room?: string;
  /** The call of a refused join, rejoin or signal. */
  call?: string;
  /** The peer of a call the error is about (a refused signal, `ice_failed`). */
  session?: string;
  /** The HTTP status of a refused event stream or request. */
  status?: number;
  /** True when the client keeps what the node refused for now (a room or a
   * call it renews after a reconnect) and tries again by itself. */
  retrying?: boolean;
}

/** A listener's remover, as on() returns it. */
export type Off = () => void;

/** A member of a room's presence: one session of a user. */
export interface Member {
  user: string;
  session: string;
  node?: string;
}

/** One page of a room's presence, as client.presence() resolves it. */
export interface PresencePage {
  /** This page, ordered by session id. */
  members: Member[];
  /** How many members the room has in all. */
  total: number;
  /** The cursor of the next page; null on the last one. */
  next: string | null;
}

/** A room message: the protocol's `message` frame. */
export interface Message {
  type: 'message';
  room: string;
  offset: number;
  epoch: string;
  data: unknown;
  /** The publishing user; absent for backends. */
  from?: string;
  /** Unix ms. */
  ts: number;
}

/** A presence event, or the `sync` after each (re)subscribe. */
export type PresenceEvent =
  | { type?: 'presence'; room: string; event: 'join' | 'leave'; user: string; session: string }
  | { type: 'presence'; room: string; event: 'sync'; total: number; next: string | null };

/** The welcome frame of a connection. */
export interface Welcome {
  session: string;
  node: string;
  user: string;
  ping_ms: number;
}

/** A position in a room. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface SubscribeAck {
  type: 'ack';
  id: string;
  epoch: string;
  offset: number;
  recovered: boolean;
  members?: Member[];
  members_total?: number;
  members_next?: string;
}

export interface PublishAck {
  type: 'ack';
  id: string;
  epoch: string;
  offset: number;
  duplicate?: boolean;
}

/** The value of a WebSocket close: the client's 'close' event, or a CloseEvent. */
export interface CloseInfo {
  code: number;
  reason: string;
  wasClean?: boolean;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface ParleyOptions {
  /** The node: ws://, wss://, http(s):// (with or without /v1/ws) or a path; default /v1/ws on this page's host. */
  url?: string;
  /** A JWT, or a function returning one (called before every connection, and ahead of each token's exp). */
  token?: TokenSource;
  /** Called when a room could not be resumed. */
  onLost?: (room: string, ack: SubscribeAck) => void;
  /** ms a command waits for its ack or error (10000). */
  timeout?: number;
  /** ms from dialling to the welcome frame (10000). */
  connectTimeout?: number;
  /** First reconnect delay cap, ms (250). */
  minDelay?: number;
  /** Largest reconnect delay cap, ms (10000). */
  maxDelay?: number;
  /** Connect at once (true); otherwise call connect(). */
  connect?: boolean;
  /** A WebSocket implementation (e.g. in Node). */
  WebSocket?: typeof WebSocket;
}

export interface SubscribeOptions {
  /** Receive presence events, members and their count. */
  presence?: boolean;
  /** Each message, once, in offset order. */
  onMessage?: (message: Message) => void;
  /** A join, a leave, or a sync; members is the known list, total the room's count. */
  onPresence?: (event: PresenceEvent, members: Member[], total: number) => void;
  /** Messages since the last position are gone: reload the room's state. */
  onLost?: (room: string, ack: SubscribeAck) => void;
  /** Start after this position. */
  since?: Position;
  /** ms to wait for the first ack. */
  timeout?: number;
}

export type ParleyState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ParleyEvents {
  state: ParleyState;
  open: { url: string; protocol: string };
  welcome: Welcome;
  close: CloseInfo;
  reconnecting: { attempt: number; delay: number };
  draining: { type: 'reconnect'; after_ms?: number; reason?: string };
  message: Message;
  lost: { room: string; ack: SubscribeAck };
  refresh: { expires: number | null };
  error: ParleyError;
}

/** A connection to a Parley node over WebSocket, reconnecting by itself. */
export class Parley {
  constructor(options?: ParleyOptions);
  url: string | undefined;
  token: TokenSource | undefined;
  onLost: ((room: string, ack: SubscribeAck) => void) | undefined;
  timeout: number;
  connectTimeout: number;
  minDelay: number;
  maxDelay: number;
  WebSocket: typeof WebSocket;
  /** The current state. */
  state: ParleyState;
  /** The last welcome frame. */
  welcome: Welcome | null;
  /** The session id of the current connection, or null. */
  readonly session: string | null;
  /** The user of the current connection. */
  readonly user: string | null;

  on<K extends keyof ParleyEvents>(type: K, fn: (value: ParleyEvents[K]) => void): Off;
  off<K extends keyof ParleyEvents>(type: K, fn: (value: ParleyEvents[K]) => void): void;

  /** Starts connecting (after close(), too). */
  connect(): void;
  /** Closes the connection, stops reconnecting and leaves every call. */
  close(): void;
  /** Drops the connection and reconnects at once, resuming every room and call. */
  reconnect(): void;
  subscribe(room: string, options?: SubscribeOptions): Promise<SubscribeAck>;
  unsubscribe(room: string): Promise<{ type: 'ack'; id?: string }>;
  publish(room: string, data: unknown, options?: { key?: string; timeout?: number }): Promise<PublishAck>;
  position(room: string): Position | null;
  members(room: string): Member[];
  membersTotal(room: string): number | null;
  presence(room: string, options?: { cursor?: string; limit?: number; timeout?: number }): Promise<PresencePage>;
  allMembers(room: string, options?: { limit?: number; timeout?: number }): Promise<Member[]>;
  /** The rooms this client is subscribed to (or is subscribing to). */
  rooms(): string[];
  /** Joins a WebRTC call; resolves once the node acknowledged the join. */
  join(name: string, options?: CallOptions): Promise<Call>;
  /** The calls this client is in (or is joining). */
  calls(): string[];
}

export interface ParleySSEOptions {
  rooms: string[];
  /** Default /v1/sse on this page's host. */
  url?: string;
  token?: TokenSource;
  onMessage?: (message: Message) => void;
  onLost?: (room: string) => void;
  onError?: (err: ParleyError) => void;
  /** 1000 */
  minDelay?: number;
  /** 30000 */
  maxDelay?: number;
  connect?: boolean;
  EventSource?: typeof EventSource;
  fetch?: typeof fetch;
}

export type ParleySSEState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ParleySSEEvents {
  state: ParleySSEState;
  welcome: Welcome & { rooms: Record<string, { epoch: string; offset: number; recovered: boolean }> };
  message: Message;
  lost: { room: string };
  draining: string;
  error: ParleyError;
}

/** Receives room messages over Server-Sent Events, resuming after any reconnect. */
export class ParleySSE {
  constructor(options: ParleySSEOptions);
  rooms: string[];
  url: string | undefined;
  token: TokenSource | undefined;
  onMessage: ((message: Message) => void) | undefined;
  onLost: ((room: string) => void) | undefined;
  onError: ((err: ParleyError) => void) | undefined;
  minDelay: number;
  maxDelay: number;
  EventSource: typeof EventSource;
  fetch: typeof fetch;
  state: ParleySSEState;
  welcome: ParleySSEEvents['welcome'] | null;
  /** Why the client is not open: the last error since a stream opened, or null. */
  error: ParleyError | null;
  /** The last event id: an opaque cursor over every room of the stream. */
  readonly lastEventId: string;

  on<K extends keyof ParleySSEEvents>(type: K, fn: (value: ParleySSEEvents[K]) => void): Off;
  off<K extends keyof ParleySSEEvents>(type: K, fn: (value: ParleySSEEvents[K]) => void): void;
  connect(): void;
  close(): void;
}

/** Options of client.join(). */
export interface CallOptions {
  /** Use TURN relays only (iceTransportPolicy 'relay'); also on when the ack says relay. */
  relayOnly?: boolean;
  /** Local media whose tracks go to every peer, or null for data only. */
  stream?: MediaStream | null;
  /** A negotiated data channel (label 'parley', id 0) on every pair (true). */
  dataChannel?: boolean;
  /** ICE servers to use instead of the ack's (they are then never refreshed). */
  iceServers?: RTCIceServer[];
  /** ms between getStats samples of each connected peer (1000); 0 turns sampling off. */
  statsInterval?: number;
  /** ms to wait for the join's ack (the client's timeout). */
  timeout?: number;
  /** An RTCPeerConnection implementation (tests pass a fake). */
  RTCPeerConnection?: typeof RTCPeerConnection;
  /** Fetches fresh TURN credentials from /v1/ice-servers. */
  fetch?: typeof fetch;
}

/** The selected candidate pair's type: relay when either side is a relay, else the local candidate's type. */
export type PairType = 'host' | 'srflx' | 'prflx' | 'relay';

/** A remote peer of a call, kept up to date. */
export interface CallPeer {
  session: string;
  user: string | null;
  /** This client's role toward it in perfect negotiation. */
  polite: boolean;
  pc: RTCPeerConnection;
  /** The PeerConnection's connectionState. */
  state: RTCPeerConnectionState;
  pair: PairType | null;
  /** The pair's round-trip time, ms. */
  rtt: number | null;
  /** How the local candidate reaches the peer, or its TURN server for a relay. */
  protocol: 'udp' | 'tcp' | 'tls' | null;
  /** The peer's media, once a track arrived. */
  stream: MediaStream | null;
}

export type RestartReason = 'failed' | 'disconnected' | 'resume' | 'reconnect' | 'manual';

export interface CallEvents {
  peer: { session: string; user: string | null };
  leave: { session: string; user: string | null };
  track: { session: string; track: MediaStreamTrack; stream: MediaStream | null };
  open: { session: string };
  data: { session: string; data: string | ArrayBuffer };
  state: { session: string; state: RTCPeerConnectionState };
  stats: { session: string; pair: PairType | null; rtt: number | null; protocol: 'udp' | 'tcp' | 'tls' | null };
  restart: { session: string; reason: RestartReason };
  rejoined: { resumed: boolean };
  ended: { reason: 'left' | 'closed' | 'refused'; error?: ParleyError };
  error: ParleyError;
}

/** This client's membership of a WebRTC call: one RTCPeerConnection per remote peer. Made by client.join(). */
export class Call {
  private constructor();
  /** The call's name. */
  readonly name: string;
  /** This peer's session in the call; it changes only after a rejoin that did not resume. */
  readonly session: string;
  /** Whether the PeerConnections use TURN relays only. */
  readonly relayOnly: boolean;
  /** The remote peers, by session. */
  readonly peers: Map<string, CallPeer>;
  /** Whether the call has ended. */
  readonly ended: boolean;

  on<K extends keyof CallEvents>(type: K, fn: (value: CallEvents[K]) => void): Off;
  off<K extends keyof CallEvents>(type: K, fn: (value: CallEvents[K]) => void): void;
  /** Sends text on the data channel to every open peer, or to one; returns how many it went to. */
  send(data: string, to?: string): number;
  /** Restarts ICE toward one peer, or every peer. */
  restartIce(session?: string): void;
  /** Replaces the local media sent to every peer (or null). */
  setStream(stream: MediaStream | null): void;
  /** Leaves the call: the other peers hear of it at once; every PeerConnection is closed. */
  leave(): Promise<void>;
}

/**
 * A plain sentence a person can act on, for a ParleyError (or its code), a
 * WebSocket close ({code, reason}), a getUserMedia DOMException, or any
 * other error.
 */
export function explain(
  x: ParleyError | ParleyErrorCode | CloseInfo | DOMException | Error | null | undefined,
  options?: {
    /** What the person does to give a fresh token, ending the sentences about tokens. */
    token?: string;
  },
): string;
