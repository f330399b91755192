// Type declarations of roomcast.js, the browser client of roomcast's wire protocol v1.

/** The WebSocket subprotocol of wire protocol v1: "roomcast.v1". */
export declare const PROTOCOL: "roomcast.v1";

/** "connecting", "connected", "disconnected" (a reconnect is scheduled) or "closed" (for good). */
export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

/** A string, or a function called for every (re)connect and every refresh. */
export type TokenSource = string | (() => string | Promise<string>);

export interface RoomcastOptions {
  /** The token sent in the first frame; none: an anonymous connection. */
  token?: TokenSource | null;
  /** Backoff floor in milliseconds (default 500). */
  minDelay?: number;
  /** Backoff ceiling in milliseconds (default 20000). */
  maxDelay?: number;
  /** How long a request may wait for its reply, connecting included (default 10000 ms). */
  requestTimeout?: number;
  /** How long a socket may take to open and receive connection.ack (default 15000 ms). */
  connectTimeout?: number;
  /** The WebSocket class to use (default: globalThis.WebSocket). */
  WebSocket?: { new (url: string, protocols?: string | string[]): WebSocket };
}

/** A position in a room's stream. */
export interface Position {
  offset: number;
  epoch: string;
}

/** An event published to a room, or sent to a user or a connection (room: null). */
export interface RoomcastEvent<P = unknown> {
  type: string;
  room: string | null;
  payload: P;
  id: string;
  timestamp: number;
  userId: string | null;
  /** Rooms with history only. */
  offset?: number;
  /** Rooms with history only. */
  epoch?: string;
}

/** What a room's subscription could not or could recover. */
export interface RecoveryNotice {
  room: string;
  /** false: messages were missed and are gone; reload the room's state. */
  recovered: boolean;
  offset: number | null;
  epoch: string | null;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** The close code, for "disconnected" and "closed". */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt, for "disconnected". */
  delay?: number;
  /** Why the client stopped, for "closed" (null when closed normally). */
  error?: RoomcastError | null;
  clientId?: string | null;
  userId?: string | null;
}

/** The payload of connection.ack. */
export interface ConnectionInfo {
  clientId: string | null;
  userId: string | null;
  heartbeatMs: number;
  expiresAt: number | null;
}

/** A granted room's subscribe result. */
export interface RoomResult {
  ok: true;
  offset?: number;
  epoch?: string;
  recovered?: boolean;
}

export interface Member {
  userId: string | null;
  clientId: string;
  info: unknown;
}

export interface HistoryPage<P = unknown> {
  room: string;
  publications: RoomcastEvent<P>[];
  offset: number;
  epoch: string;
  /** Present when asked with since. */
  recovered?: boolean;
}

export interface SubscribeOptions {
  /** Receive the room's last N messages (1..10000) with the join, when it has no position yet. */
  history?: number;
  /** Start from this position (as a previous page kept it): what came after is replayed. */
  since?: Position;
}

export interface HistoryOptions {
  /** At most this many messages (1..10000); none: every kept message. */
  limit?: number;
  /** The messages after this position. */
  since?: Position;
}

export interface PublishOptions {
  /** Do not keep the event in the room's history. */
  ephemeral?: boolean;
}

export interface RoomcastEventMap {
  state: StateChange;
  recovered: RecoveryNotice;
  event: RoomcastEvent;
  error: RoomcastError;
}

/**
 * A server error code (bad_request, unauthorized, forbidden, not_found, rate_limited,
 * limit_exceeded, internal), or the client's own: timeout, connection_lost, closed,
 * unsubscribed, token_provider, malformed_frame, connection_failed.
 */
export declare class RoomcastError extends Error {
  constructor(
    code: string,
    message: string,
    details?: { retryAfterMs?: number | null; room?: string | null; closeCode?: number | null },
  );
  readonly name: "RoomcastError";
  readonly code: string;
  readonly retryAfterMs: number | null;
  /** The room, for a refused subscription. */
  readonly room: string | null;
  /** The close code, for errors that ended a connection. */
  readonly closeCode: number | null;
}

/** One subscription to a room, made by Roomcast.subscribe(). */
export declare class Subscription {
  private constructor();
  readonly room: string;
  /** Resolves with the room's result once joined; rejects when the server refuses the room. */
  readonly ready: Promise<RoomResult>;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  /** The position of the room's last message seen, or null. */
  readonly position: Position | null;
  /** Call listener for each event of this type in the room ("*": every event); returns a function to stop. */
  on<P = unknown>(type: string, listener: (event: RoomcastEvent<P>) => void): () => void;
  /** Call listener when the room is recovered after a reconnect, or reset; returns a function to stop. */
  onRecovery(listener: (notice: RecoveryNotice) => void): () => void;
  /**
   * Call listener once when the subscription ends: with the server's error when it refused
   * the room (also on a resubscribe after a reconnect), with null after unsubscribe();
   * returns a function to stop.
   */
  onEnd(listener: (error: RoomcastError | null) => void): () => void;
  /** Leave the room (the server is told when no other subscription holds it). */
  unsubscribe(): Promise<void>;
}

/** A connection to a roomcast server that reconnects by itself. */
export declare class Roomcast {
  /** url: ws:, wss:, or http:/https: (converted), absolute or relative to the page. */
  constructor(url: string | URL, options?: RoomcastOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The last connection.ack's payload, or null before the first. */
  readonly connection: ConnectionInfo | null;
  on<K extends keyof RoomcastEventMap>(
    name: K,
    listener: (value: RoomcastEventMap[K]) => void,
  ): () => void;
  /** Start connecting, from "disconnected" or "closed". */
  connect(): void;
  /** Close for good: no reconnect; pending requests fail with code "closed". */
  close(): void;
  /** Subscribe now, or as soon as connected; rooms are resubscribed on every reconnect. */
  subscribe(room: string, options?: SubscribeOptions): Subscription;
  publish(room: string, type: string, payload?: unknown, options?: PublishOptions): Promise<{ id: string }>;
  presence(room: string): Promise<Member[]>;
  history<P = unknown>(room: string, options?: HistoryOptions): Promise<HistoryPage<P>>;
}
