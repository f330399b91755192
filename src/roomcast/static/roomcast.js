// roomcast.js: the browser client of roomcast's wire protocol v1.
//
// One dependency-free ES module for modern browsers, no build step. It connects,
// authenticates with the first message, subscribes, reconnects with backoff and full
// jitter, resubscribes every room from its last position and tells the application
// what it could not recover. Its types are in roomcast.d.ts, beside it; the guide is
// docs/howto/browser-client.md, the protocol docs/reference/protocol.md.

/** The WebSocket subprotocol of wire protocol v1. */
export const PROTOCOL = "roomcast.v1";

// Close codes by what a client should do next (roomcast.CloseCode's `reconnect`
// advice; tests/browser checks these lists against it). Every other code,
// 1005/1006 (no close frame: the network) among them, reconnects after a delay.
const CLOSE_NEVER = [1000, 1009];
const CLOSE_WITH_NEW_TOKEN = [1008, 4001, 4002];

// The server's own frames; every other `type` is an application event.
const CONTROL = new Set([
  "connection.ack", "reply", "error", "ping", "pong", "gap", "room.reset", "token.expiring",
]);
const ROOM = /^[A-Za-z0-9_\-.:@=/]{1,128}$/;
const MAX_ROOMS_PER_SUBSCRIBE = 100;
const MAX_HISTORY = 10000;

const DEFAULTS = {
  minDelay: 500,
  maxDelay: 20000,
  requestTimeout: 10000,
  connectTimeout: 15000,
};

/** An error of roomcast: a server error code, or one of the client's own. */
export class RoomcastError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{retryAfterMs?: number|null, room?: string|null, closeCode?: number|null}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = "RoomcastError";
    this.code = code;
    this.retryAfterMs = typeof details.retryAfterMs === "number" ? details.retryAfterMs : null;
    this.room = details.room ?? null;
    this.closeCode = details.closeCode ?? null;
  }
}

/** The error a failed reply, a refused room or an `error` frame carries. */
function serverError(error, room = null) {
  const e = isObject(error) ? error : {};
  const code = typeof e.code === "string" ? e.code : "internal";
  const message = typeof e.message === "string" ? e.message : code;
  return new RoomcastError(code, message, { retryAfterMs: e.retryAfterMs, room });
}

function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isPosition(value) {
  return isObject(value) && Number.isSafeInteger(value.offset) && value.offset >= 0 &&
    typeof value.epoch === "string" && value.epoch.length > 0;
}

/** Call a listener of the application; what it throws is reported, never thrown here. */
function call(listener, value) {
  try {
    listener(value);
  } catch (error) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(error);
    else setTimeout(() => { throw error; });
  }
}

class Listeners {
  constructor() { this.map = new Map(); }
  on(name, listener) {
    if (typeof listener !== "function") throw new TypeError("the listener must be a function");
    let set = this.map.get(name);
    if (!set) this.map.set(name, set = new Set());
    // A wrapper per registration, so that the same function can be added twice.
    const entry = (value) => listener(value);
    set.add(entry);
    return () => { set.delete(entry); };
  }
  emit(name, value) {
    const set = this.map.get(name);
    if (!set) return 0;
    for (const listener of [...set]) call(listener, value);
    return set.size;
  }
}

/** One subscription to a room, made by `Roomcast.subscribe()`. */
export class Subscription {
  /** @internal */
  constructor(client, room) {
    this.room = room;
    this._client = client;
    this._listeners = new Listeners();
    this._state = "subscribing";
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    // A refusal is also reported to rc.on("error"): a page that never awaits
    // `ready` gets no "unhandled rejection" for it.
    this.ready.catch(() => {});
  }

  /** "subscribing", "subscribed" or "unsubscribed". */
  get state() { return this._state; }

  /** The position of the last message of the room seen: `{offset, epoch}`, or null. */
  get position() {
    const entry = this._client._rooms.get(this.room);
    return entry && entry.position ? { ...entry.position } : null;
  }

  /** Call `listener(event)` for each event of `type` in the room ("*": every event). */
  on(type, listener) { return this._listeners.on("event:" + type, listener); }

  /** Call `listener(notice)` when the room is recovered after a reconnect, or reset. */
  onRecovery(listener) { return this._listeners.on("recovered", listener); }

  /**
   * Call `listener(error)` once when the subscription ends: with the server's error
   * when it refused the room (also on a resubscribe after a reconnect, when access
   * was lost meanwhile), with null after `unsubscribe()`.
   */
  onEnd(listener) { return this._listeners.on("end", listener); }

  /** Leave the room (the server is told when no other subscription holds it). */
  unsubscribe() { return this._client._unsubscribe(this); }

  /** @internal */
  _deliver(event) {
    this._listeners.emit("event:" + event.type, event);
    this._listeners.emit("event:*", event);
  }

  /** @internal */
  _joined(result) {
    if (this._state === "subscribing") this._state = "subscribed";
    this._resolve(result);
  }

  /** @internal */
  _end(error) {
    if (this._state === "unsubscribed") return;
    this._state = "unsubscribed";
    if (error) this._reject(error);
    else this._reject(new RoomcastError("unsubscribed", `unsubscribed from ${this.room}`));
    this._listeners.emit("end", error || null);
  }
}

/** A connection to a roomcast server that reconnects by itself. */
export class Roomcast {
  /**
   * @param {string|URL} url the WebSocket URL (ws: or wss:; http: and https: are converted).
   * @param {object} [options] see roomcast.d.ts.
   */
  constructor(url, options = {}) {
    const target = new URL(String(url), globalThis.location ? globalThis.location.href : undefined);
    if (target.protocol === "http:") target.protocol = "ws:";
    else if (target.protocol === "https:") target.protocol = "wss:";
    if (target.protocol !== "ws:" && target.protocol !== "wss:") {
      throw new TypeError(`a roomcast URL is ws: or wss:, not ${target.protocol}`);
    }
    this.url = target.href;
    const token = options.token ?? null;
    if (token !== null && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("token must be a string or a function returning one");
    }
    this._token = token;
    this._options = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS)) {
      if (options[key] === undefined) continue;
      const value = options[key];
      if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
        throw new TypeError(`${key} must be a positive number of milliseconds`);
      }
      this._options[key] = value;
    }
    if (this._options.maxDelay < this._options.minDelay) {
      throw new TypeError("maxDelay must not be smaller than minDelay");
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._listeners = new Listeners();
    this._state = "disconnected";
    this._socket = null;
    this._generation = 0;     // bumped for each socket: callbacks of old ones do nothing
    this._attempt = 0;        // failed attempts since the last connection.ack
    this._nextRef = 1;
    this._pending = new Map(); // ref -> request
    this._waiting = [];        // requests made while not connected, in order
    this._rooms = new Map();   // room -> {subs, history, since, position, joined, joining}
    this._toJoin = new Set();  // rooms to subscribe at the next flush
    this._flushQueued = false;
    this._reconnectTimer = null;
    this._livenessTimer = null;
    this._usedToken = null;    // the token the server last saw: a refusal is of this one
    this._nextToken = null;    // a token obtained after a refusal, for the next connect
    this._refreshing = false;
    this._ack = null;
    this._acked = false;       // whether this socket's connection.ack came
    this._onOnline = null;     // the window's "online" listener, while not closed
    this._lastFrameAt = 0;     // when the socket last received a frame (Date.now())
    this._silenceLimit = 0;    // how long it may stay silent before it counts as lost
    this._frames = 0;          // how many frames the socket has received
    this._pingedAfter = null;  // the frame count when the client pinged the silent server, if it has
  }

  /** "connecting", "connected", "disconnected" or "closed". */
  get state() { return this._state; }

  /** The payload of the last `connection.ack`: `{clientId, userId, heartbeatMs, expiresAt}`. */
  get connection() { return this._ack ? { ...this._ack } : null; }

  /** Call `listener` on "state", "recovered", "event" or "error"; returns a function to stop. */
  on(name, listener) {
    if (!["state", "recovered", "event", "error"].includes(name)) {
      throw new TypeError(`unknown event ${JSON.stringify(name)}: state, recovered, event or error`);
    }
    return this._listeners.on(name, listener);
  }

  /** Start connecting (from "disconnected" or "closed"); does nothing otherwise. */
  connect() {
    if (this._state === "connecting" || this._state === "connected") return;
    if (!this._onOnline && typeof globalThis.addEventListener === "function") {
      // Back online: try now rather than at the end of a long backoff delay.
      this._onOnline = () => { if (this._state === "disconnected") this.connect(); };
      globalThis.addEventListener("online", this._onOnline);
    }
    if (this._reconnectTimer !== null) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
    if (this._state === "closed") this._attempt = 0;
    this._open();
  }

  /** Close the connection for good; pending requests fail with code "closed". */
  close() {
    this._terminate(1000, "closed by the client", null, true);
  }

  /**
   * Subscribe to `room`, now or as soon as connected.
   * @param {string} room
   * @param {{history?: number, since?: {offset: number, epoch: string}}} [options]
   */
  subscribe(room, options = {}) {
    if (typeof room !== "string" || !ROOM.test(room)) {
      throw new TypeError(`not a room name: ${JSON.stringify(room)}`);
    }
    const history = options.history ?? null;
    if (history !== null && !(Number.isInteger(history) && history >= 1 && history <= MAX_HISTORY)) {
      throw new TypeError(`history must be an integer from 1 to ${MAX_HISTORY}`);
    }
    const since = options.since ?? null;
    if (since !== null && !isPosition(since)) {
      throw new TypeError("since must be {offset, epoch} as a subscribe result gives it");
    }
    const sub = new Subscription(this, room);
    let entry = this._rooms.get(room);
    if (entry) {
      // The room is held already: this subscription shares it (and its position).
      entry.subs.add(sub);
      if (entry.joined) sub._joined(entry.result);
      return sub;
    }
    entry = {
      subs: new Set([sub]), history, since: null, position: since ? { ...since } : null,
      joined: false, joining: null, result: null,
    };
    this._rooms.set(room, entry);
    this._join(room);
    return sub;
  }

  /**
   * Publish an event to `room`; resolves with `{id}`.
   * @returns {Promise<{id: string}>}
   */
  publish(room, type, payload = null, options = {}) {
    const frame = { action: "publish", room, type, payload };
    if (options.ephemeral) frame.ephemeral = true;
    return this._request(frame).then((reply) => {
      if (!isObject(reply) || typeof reply.id !== "string") throw this._malformed("publish reply");
      return { id: reply.id };
    });
  }

  /** Who is in `room`: `[{userId, clientId, info}]`. */
  presence(room) {
    return this._request({ action: "presence", room }).then((reply) => {
      if (!isObject(reply) || !Array.isArray(reply.members)) throw this._malformed("presence reply");
      return reply.members;
    });
  }

  /**
   * The room's kept messages: the last `limit`, or those after `since`.
   * @returns {Promise<{room: string, publications: object[], offset: number, epoch: string, recovered?: boolean}>}
   */
  history(room, options = {}) {
    const frame = { action: "history", room };
    if (options.limit !== undefined && options.limit !== null) {
      const limit = options.limit;
      if (!(Number.isInteger(limit) && limit >= 1 && limit <= MAX_HISTORY)) {
        return Promise.reject(new TypeError(`limit must be an integer from 1 to ${MAX_HISTORY}`));
      }
      frame.limit = limit;
    }
    if (options.since !== undefined && options.since !== null) {
      if (!isPosition(options.since)) {
        return Promise.reject(new TypeError("since must be {offset, epoch}"));
      }
      frame.since = { offset: options.since.offset, epoch: options.since.epoch };
    }
    return this._request(frame).then((reply) => {
      if (!isObject(reply) || !Array.isArray(reply.publications)) {
        throw this._malformed("history reply");
      }
      return reply;
    });
  }

  // --------------------------------------------------------------- connection

  _setState(state, details = {}) {
    const previous = this._state;
    if (previous === state) return;
    this._state = state;
    this._listeners.emit("state", { state, previous, ...details });
  }

  async _open() {
    const generation = ++this._generation;
    this._setState("connecting");
    let token = this._token;
    if (this._nextToken !== null) {
      token = this._nextToken;
      this._nextToken = null;
    } else if (typeof token === "function") {
      try {
        token = await this._callProvider();
      } catch (error) {
        if (generation !== this._generation) return;
        if (error.code === "unauthorized") {
          // The provider says there is no token to be had (the user signed out).
          this._terminate(1006, "no token", error);
          return;
        }
        this._emitError(error);
        this._lost(generation, 1006, "the token provider failed");
        return;
      }
    }
    if (generation !== this._generation) return; // closed or restarted meanwhile
    let socket;
    try {
      socket = new this._WebSocket(this.url, [PROTOCOL]);
    } catch (error) {
      this._terminate(1006, "cannot open the WebSocket",
        new RoomcastError("connection_failed", String(error && error.message || error)));
      return;
    }
    this._socket = socket;
    this._acked = false;
    this._usedToken = token;
    this._arm(generation, this._options.connectTimeout);
    socket.onopen = () => {
      if (generation !== this._generation) return;
      // Authentication by the first message: the token never goes in the URL.
      if (token !== null) this._sendFrame({ action: "auth", token });
    };
    socket.onmessage = (message) => {
      if (generation !== this._generation) return;
      this._receive(generation, message.data);
    };
    socket.onclose = (event) => {
      if (generation !== this._generation) return;
      this._lost(generation, event.code || 1005, event.reason || "");
    };
    socket.onerror = () => {}; // the close event that follows says what happened
  }

  async _callProvider() {
    let token;
    try {
      token = await this._token();
    } catch (error) {
      if (error instanceof RoomcastError && error.code === "unauthorized") throw error;
      throw new RoomcastError("token_provider", `the token provider failed: ${error && error.message || error}`);
    }
    if (typeof token !== "string" || token.length === 0) {
      throw new RoomcastError("token_provider", "the token provider must return a non-empty string");
    }
    return token;
  }

  /**
   * Count a silent connection as lost after `ms` without a frame; with `pingAfter`,
   * first ask the server for a frame (a client `ping`, answered with `pong`) after that
   * long a silence. Servers that ping at the WebSocket level, which a page cannot see,
   * send no frame to an idle page otherwise. One timer per connection, not one per
   * frame: a frame only notes its time, and the timer, when it fires early, waits for
   * the rest.
   */
  _arm(generation, ms, pingAfter = null) {
    this._silenceLimit = ms;
    this._lastFrameAt = Date.now();
    this._pingedAfter = null;
    if (this._livenessTimer !== null) clearTimeout(this._livenessTimer);
    const check = () => {
      this._livenessTimer = null;
      if (generation !== this._generation) return;
      const silent = Date.now() - this._lastFrameAt;
      if (silent >= this._silenceLimit) {
        const socket = this._socket;
        this._lost(generation, 1006, `nothing received for ${Math.round(this._silenceLimit)} ms`);
        try { socket && socket.close(); } catch { /* already closing */ }
        return;
      }
      let next = this._silenceLimit - silent;
      if (pingAfter !== null) {
        // Any frame since the ping answers it. Counted, not timed: a clock of reduced
        // precision gives a ping and its pong the same reading.
        if (this._pingedAfter !== null && this._frames > this._pingedAfter) this._pingedAfter = null;
        if (this._pingedAfter === null) {
          if (silent >= pingAfter) {
            this._pingedAfter = this._frames;
            this._sendFrame({ action: "ping" });
            next = Math.min(next, pingAfter); // then, after the answer, count afresh
          } else {
            next = Math.min(next, pingAfter - silent);
          }
        } else {
          next = Math.min(next, pingAfter);
        }
      }
      this._livenessTimer = setTimeout(check, next);
    };
    this._livenessTimer = setTimeout(check, pingAfter === null ? ms : Math.min(ms, pingAfter));
  }

  _livenessMs() {
    const heartbeat = this._ack && Number.isFinite(this._ack.heartbeatMs) ? this._ack.heartbeatMs : 30000;
    return 2 * heartbeat + 5000;
  }

  /** The socket `generation` ended with `code`: fail what was in flight, decide what next. */
  _lost(generation, code, reason) {
    if (generation !== this._generation) return;
    this._generation++; // no callback of that socket may act any more
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      if (socket.readyState === 0 || socket.readyState === 1) {
        try { socket.close(); } catch { /* nothing to close */ }
      }
    }
    this._reset(new RoomcastError("connection_lost", `the connection was lost (${code})`, { closeCode: code }));
    if (CLOSE_NEVER.includes(code)) {
      this._terminate(code, reason, code === 1000 ? null :
        new RoomcastError("closed", `the server closed the connection (${code} ${reason})`, { closeCode: code }));
      return;
    }
    const delay = this._backoff();
    if (!CLOSE_WITH_NEW_TOKEN.includes(code)) {
      this._setState("disconnected", { code, reason, delay });
      this._schedule(delay);
      return;
    }
    // The credentials were refused or ran out: only a new token may reconnect.
    const refused = this._usedToken;
    const unauthorized = (why) => new RoomcastError("unauthorized", why, { closeCode: code });
    if (typeof this._token !== "function") {
      this._terminate(code, reason, unauthorized(`the server refused the token (${code} ${reason})`));
      return;
    }
    this._setState("disconnected", { code, reason, delay });
    const waiting = this._generation;
    const started = Date.now();
    this._callProvider().then((token) => {
      if (waiting !== this._generation || this._state !== "disconnected") return;
      if (token === refused) {
        this._terminate(code, reason, unauthorized("the token provider gave the refused token again"));
        return;
      }
      this._nextToken = token;
      this._schedule(Math.max(0, delay - (Date.now() - started)));
    }, (error) => {
      if (waiting !== this._generation || this._state !== "disconnected") return;
      if (error.code === "unauthorized") {
        // The provider says there is no token to be had (the user signed out).
        this._terminate(code, reason, error);
        return;
      }
      // The provider failed (its backend is down too): try again after the delay,
      // asking it again then.
      this._emitError(error);
      this._schedule(Math.max(0, delay - (Date.now() - started)));
    });
  }

  /** Full jitter: uniform in [0, min(maxDelay, minDelay * 2^attempt)). */
  _backoff() {
    const { minDelay, maxDelay } = this._options;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(this._attempt, 30));
    this._attempt++;
    return Math.random() * ceiling;
  }

  _schedule(delay) {
    if (this._reconnectTimer !== null) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._state === "disconnected") this._open();
    }, delay);
  }

  /** Forget the socket's state: in-flight requests fail, rooms wait to be joined again. */
  _reset(error) {
    if (this._livenessTimer !== null) {
      clearTimeout(this._livenessTimer);
      this._livenessTimer = null;
    }
    for (const [ref, request] of [...this._pending]) {
      this._pending.delete(ref);
      request.lost(error);
    }
    for (const entry of this._rooms.values()) {
      entry.joined = false;
      entry.joining = null;
    }
    this._toJoin.clear();
    this._refreshing = false;
  }

  /** Go to "closed": nothing reconnects, every request fails. */
  _terminate(code, reason, error, byClient = false) {
    this._generation++;
    if (this._onOnline) {
      globalThis.removeEventListener("online", this._onOnline);
      this._onOnline = null;
    }
    if (this._reconnectTimer !== null) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      try { socket.close(1000); } catch { /* already closed */ }
    }
    const closed = error ?? new RoomcastError("closed", byClient ? "the client was closed" :
      `the server closed the connection (${code}${reason ? " " + reason : ""})`, { closeCode: code });
    this._reset(closed);
    for (const request of this._waiting.splice(0)) request.lost(closed);
    if (this._state === "closed") return;
    if (error) this._emitError(error);
    this._setState("closed", { code, reason, error: error ?? null });
  }

  // ------------------------------------------------------------------ frames

  _sendFrame(frame) {
    const socket = this._socket;
    if (!socket || socket.readyState !== 1) return false;
    try {
      socket.send(JSON.stringify(frame));
    } catch {
      return false; // closing meanwhile: its close event follows
    }
    return true;
  }

  _emitError(error) {
    if (this._listeners.emit("error", error) === 0 && typeof console !== "undefined") {
      console.warn("roomcast:", error);
    }
  }

  _malformed(what, detail = "") {
    return new RoomcastError("malformed_frame", `malformed ${what} from the server${detail ? ": " + detail : ""}`);
  }

  _receive(generation, data) {
    this._lastFrameAt = Date.now();
    this._frames++;
    if (typeof data !== "string") {
      this._emitError(this._malformed("frame", "a binary frame"));
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (error) {
      this._emitError(this._malformed("frame", "invalid JSON"));
      return;
    }
    if (!isObject(frame) || typeof frame.type !== "string") {
      this._emitError(this._malformed("frame", "no type"));
      return;
    }
    try {
      this._dispatch(generation, frame);
    } catch (error) {
      // Whatever the shape of a frame, the connection goes on.
      this._emitError(error instanceof RoomcastError ? error : this._malformed(frame.type, String(error)));
    }
  }

  _dispatch(generation, frame) {
    switch (frame.type) {
      case "ping":
        this._sendFrame({ action: "pong" });
        return;
      case "pong":
        return;
      case "connection.ack":
        this._acknowledged(generation, frame.payload);
        return;
      case "reply":
        this._reply(frame);
        return;
      case "error":
        this._emitError(serverError(frame.payload));
        return;
      case "token.expiring":
        this._refresh(generation);
        return;
      case "room.reset":
        this._roomReset(frame);
        return;
      case "gap":
        this._gap(frame.payload);
        return;
      default:
        this._event(frame);
    }
  }

  _acknowledged(generation, payload) {
    if (this._acked) return; // one ack per connection
    this._acked = true;
    const ack = isObject(payload) ? payload : {};
    this._ack = {
      clientId: typeof ack.clientId === "string" ? ack.clientId : null,
      userId: typeof ack.userId === "string" ? ack.userId : null,
      heartbeatMs: Number.isFinite(ack.heartbeatMs) && ack.heartbeatMs > 0 ? ack.heartbeatMs : 30000,
      expiresAt: Number.isFinite(ack.expiresAt) ? ack.expiresAt : null,
    };
    this._attempt = 0;
    this._arm(generation, this._livenessMs(), this._ack.heartbeatMs);
    // Every room held, in one subscribe (per 100 rooms), before the state says connected.
    for (const room of this._rooms.keys()) this._toJoin.add(room);
    this._flushJoins();
    this._setState("connected", { clientId: this._ack.clientId, userId: this._ack.userId });
    if (generation !== this._generation || this._state !== "connected") return;
    for (const request of this._waiting.splice(0)) this._sendRequest(request);
  }

  // ---------------------------------------------------------------- requests

  _request(frame) {
    return new Promise((resolve, reject) => {
      if (this._state === "closed") {
        reject(new RoomcastError("closed", "the client is closed"));
        return;
      }
      const request = {
        frame, ref: null, resolve, reject, timer: null,
        lost: (error) => { clearTimeout(request.timer); reject(error); },
        settle: (reply) => {
          clearTimeout(request.timer);
          if (reply.ok === true) resolve(reply.payload);
          else reject(serverError(reply.error));
        },
      };
      request.timer = setTimeout(() => {
        if (request.ref !== null) this._pending.delete(request.ref);
        const index = this._waiting.indexOf(request);
        if (index >= 0) this._waiting.splice(index, 1);
        reject(new RoomcastError("timeout", `no reply to ${frame.action} within ${this._options.requestTimeout} ms`));
      }, this._options.requestTimeout);
      if (this._state === "connected") this._sendRequest(request);
      else this._waiting.push(request);
    });
  }

  _sendRequest(request) {
    const ref = this._nextRef++;
    request.ref = ref;
    this._pending.set(ref, request);
    if (!this._sendFrame({ ...request.frame, ref })) {
      this._pending.delete(ref);
      request.lost(new RoomcastError("connection_lost", "the connection was lost"));
    }
  }

  _reply(frame) {
    const request = this._pending.get(frame.ref);
    if (!request) return; // timed out already, or not ours
    this._pending.delete(frame.ref);
    if (frame.ok === true || frame.ok === false) request.settle(frame);
    else request.lost(this._malformed("reply", "no ok"));
  }

  // ------------------------------------------------------------------- rooms

  _join(room) {
    this._toJoin.add(room);
    if (this._state !== "connected" || this._flushQueued) return;
    // Subscriptions made in the same task go out in one frame.
    this._flushQueued = true;
    queueMicrotask(() => {
      this._flushQueued = false;
      if (this._state === "connected") this._flushJoins();
    });
  }

  _flushJoins() {
    const rooms = [...this._toJoin].filter((room) => {
      const entry = this._rooms.get(room);
      return entry && !entry.joined && !entry.joining;
    });
    this._toJoin.clear();
    for (let start = 0; start < rooms.length; start += MAX_ROOMS_PER_SUBSCRIBE) {
      this._subscribeRooms(rooms.slice(start, start + MAX_ROOMS_PER_SUBSCRIBE));
    }
  }

  _subscribeRooms(rooms) {
    const frame = { action: "subscribe", rooms };
    const since = {};
    const history = {};
    for (const room of rooms) {
      const entry = this._rooms.get(room);
      entry.since = entry.position ? { ...entry.position } : null;
      if (entry.since) since[room] = entry.since;
      else if (entry.history !== null) history[room] = entry.history;
    }
    if (Object.keys(since).length) frame.since = since;
    if (Object.keys(history).length) frame.history = history;
    const ref = this._nextRef++;
    const request = {
      ref,
      lost: () => {}, // the rooms are subscribed again on the next connection
      settle: (reply) => this._subscribed(rooms, request, reply),
    };
    for (const room of rooms) this._rooms.get(room).joining = request;
    this._pending.set(ref, request);
    this._sendFrame({ ...frame, ref });
  }

  _subscribed(rooms, request, reply) {
    const mine = rooms.filter((room) => {
      const entry = this._rooms.get(room);
      return entry && entry.joining === request;
    });
    if (reply.ok !== true) {
      const error = serverError(reply.error);
      for (const room of mine) this._rooms.get(room).joining = null;
      if (error.retryAfterMs !== null || error.code === "rate_limited" || error.code === "internal") {
        // Not a refusal of the rooms: ask again later.
        setTimeout(() => {
          for (const room of mine) if (this._rooms.has(room)) this._join(room);
        }, error.retryAfterMs ?? this._options.minDelay);
        this._emitError(error);
        return;
      }
      for (const room of mine) this._refuse(room, serverError(reply.error, room));
      return;
    }
    const results = isObject(reply.payload) && isObject(reply.payload.rooms) ? reply.payload.rooms : null;
    for (const room of mine) {
      const entry = this._rooms.get(room);
      entry.joining = null;
      const result = results ? results[room] : undefined;
      if (!isObject(result) || (result.ok !== true && result.ok !== false)) {
        this._refuse(room, this._malformed("subscribe reply", `no result for ${room}`));
        continue;
      }
      if (result.ok === false) {
        this._refuse(room, serverError(result.error, room));
        continue;
      }
      entry.joined = true;
      entry.result = result;
      const asked = entry.since;
      entry.since = null;
      if (isPosition(result)) this._advance(entry, result.offset, result.epoch);
      for (const sub of entry.subs) sub._joined(result);
      if (asked) {
        this._recovered(room, {
          room, recovered: result.recovered === true,
          offset: isPosition(result) ? result.offset : null,
          epoch: isPosition(result) ? result.epoch : null,
        });
      }
    }
  }

  /** The server refused `room`: its subscriptions fail, and it is not asked for again. */
  _refuse(room, error) {
    const entry = this._rooms.get(room);
    if (!entry) return;
    this._rooms.delete(room);
    for (const sub of entry.subs) sub._end(error);
    this._emitError(error);
  }

  _unsubscribe(sub) {
    const entry = this._rooms.get(sub.room);
    if (!entry || !entry.subs.has(sub)) return Promise.resolve();
    entry.subs.delete(sub);
    sub._end(null);
    if (entry.subs.size > 0) return Promise.resolve();
    this._rooms.delete(sub.room);
    this._toJoin.delete(sub.room);
    if (!entry.joined && !entry.joining) return Promise.resolve();
    if (this._state !== "connected") return Promise.resolve(); // nothing to leave
    return this._request({ action: "unsubscribe", rooms: [sub.room] }).then(() => {}, (error) => {
      // Gone with the connection, or not in the room: left either way.
      if (error.code !== "connection_lost" && error.code !== "not_found" && error.code !== "closed") throw error;
    });
  }

  /** Move the room's position forward (or to a new epoch); false for an event seen already. */
  _advance(entry, offset, epoch) {
    const position = entry.position;
    if (position && position.epoch === epoch && offset <= position.offset) return false;
    entry.position = { offset, epoch };
    return true;
  }

  _event(frame) {
    const room = frame.room ?? null;
    if (room === null) {
      this._listeners.emit("event", frame);
      return;
    }
    if (typeof room !== "string") throw this._malformed(frame.type, "room is not a string");
    const entry = this._rooms.get(room);
    if (!entry) return; // left already
    if (Number.isSafeInteger(frame.offset) && typeof frame.epoch === "string") {
      // Each message of a room once, in order, whatever a replay repeats.
      if (!this._advance(entry, frame.offset, frame.epoch)) return;
    }
    this._listeners.emit("event", frame);
    for (const sub of [...entry.subs]) sub._deliver(frame);
  }

  _recovered(room, notice) {
    this._listeners.emit("recovered", notice);
    const entry = this._rooms.get(room);
    if (entry) for (const sub of [...entry.subs]) sub._listeners.emit("recovered", notice);
  }

  _roomReset(frame) {
    const room = frame.room;
    const entry = typeof room === "string" ? this._rooms.get(room) : undefined;
    if (!entry) return;
    const payload = isObject(frame.payload) ? frame.payload : {};
    if (isPosition(payload)) this._advance(entry, payload.offset, payload.epoch);
    this._recovered(room, {
      room, recovered: false,
      offset: entry.position ? entry.position.offset : null,
      epoch: entry.position ? entry.position.epoch : null,
    });
  }

  _gap(payload) {
    // The server dropped messages for these rooms (this client read too slowly):
    // what the page shows of them is stale.
    const rooms = isObject(payload) && Array.isArray(payload.rooms) ? payload.rooms : [];
    for (const room of rooms) {
      const entry = this._rooms.get(room);
      if (!entry) continue;
      this._recovered(room, {
        room, recovered: false,
        offset: entry.position ? entry.position.offset : null,
        epoch: entry.position ? entry.position.epoch : null,
      });
    }
  }

  // ------------------------------------------------------------------- token

  async _refresh(generation) {
    if (typeof this._token !== "function" || this._refreshing) return;
    this._refreshing = true;
    try {
      const token = await this._callProvider();
      if (generation !== this._generation) return;
      const reply = await this._request({ action: "refresh", token });
      this._usedToken = token;
      if (this._ack && isObject(reply) && (reply.expiresAt === null || Number.isFinite(reply.expiresAt))) {
        this._ack.expiresAt = reply.expiresAt;
      }
      const removed = isObject(reply) && Array.isArray(reply.removed) ? reply.removed : [];
      for (const room of removed) {
        this._refuse(room, new RoomcastError("forbidden", `the new token does not allow ${room}`, { room }));
      }
    } catch (error) {
      // The server closes the connection with 4002 when the token runs out.
      if (generation === this._generation) this._emitError(error);
    } finally {
      if (generation === this._generation) this._refreshing = false;
    }
  }
}
