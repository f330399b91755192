// The connection to the hub: its state shown at the top of the page, and `follow`,
// which subscribes to a room and loads its state over REST (again when roomcast.js
// says the room could not be recovered).

import { Roomcast } from "/roomcast.js";
import { live, state } from "./state.js";
import { $, banner, toast } from "./dom.js";
import { tokenProvider } from "./api.js";
import { loadActivity, loadNotifications, onFeedEvent, onUserEvent } from "./feed.js";
import { presenceUnknown, refreshPresence } from "./board.js";

const STATE_TEXT = {
  connecting: "Connecting…",
  connected: "Live",
  disconnected: "Reconnecting…",
  closed: "Offline",
};

function showConnection({ state: now, code, reason }) {
  const node = $("#connection");
  node.dataset.state = now;
  let text = STATE_TEXT[now];
  if (now === "disconnected" || (now === "connecting" && node.dataset.lost)) {
    // Why the connection ended, kept while it retries: each refused retry says 1006.
    if (!node.dataset.lost) node.dataset.why = code ? ` (${code}${reason ? " " + reason : ""})` : "";
    node.dataset.lost = "1";
    text = `Reconnecting…${node.dataset.why}`;
    node.dataset.state = "reconnecting";
  }
  if (now === "connected") {
    delete node.dataset.lost;
    delete node.dataset.why;
  }
  $("#status").textContent = text;
  document.body.classList.toggle("offline", now !== "connected");
}

// Connect, following the workspace's and the user's rooms; `ended(message)` is called
// when the server refuses the session for good.
export function connect(ended) {
  live.rc = new Roomcast(new URL("/ws", location.href), { token: tokenProvider });
  live.rc.on("state", (change) => {
    const wasLost = Boolean($("#connection").dataset.lost);
    showConnection(change);
    if (change.state === "connected") {
      refreshPresence();
      if (wasLost) catchingUp();
    } else if (change.state === "disconnected" || change.state === "closed") {
      // Who is here is not known while the page is not connected: say so rather
      // than show who was here before.
      presenceUnknown();
      settle(false);
    }
    if (change.state === "closed" && change.error && change.error.code === "unauthorized") {
      ended("Your session ended: sign in again.");
    }
  });
  live.rc.on("recovered", ({ room, recovered }) => {
    if (!catchUp) return;
    if (!recovered) catchUp.lost = true;
    catchUp.waiting.delete(room);
    if (!catchUp.waiting.size) settle(true);
  });
  live.rc.on("error", (error) => console.warn("roomcast:", error.code, error.message));
  // Each room's subscription handles its own recovery notice (see follow()).
  live.subs.workspace = follow(`workspace:${state.workspace.workspace.id}`, onFeedEvent, loadActivity);
  live.subs.user = follow(`user:${state.user}`, onUserEvent, loadNotifications);
  live.rc.connect();
}

// After a reconnect, one message: "caught up" once every room that had a position
// was recovered, or none here if one could not be (follow() reloads it and the banner
// says so).
let catchUp = null;

function catchingUp() {
  settle(false);
  const waiting = new Set(Object.values(live.subs).filter((sub) => sub && sub.position).map((sub) => sub.room));
  catchUp = { waiting, lost: false, timer: setTimeout(() => settle(false), 5000) };
  if (!waiting.size) settle(true);
}

function settle(done) {
  const ended = catchUp;
  if (!ended) return;
  catchUp = null;
  clearTimeout(ended.timer);
  if (done && !ended.lost) {
    banner("");
    toast("Back online: caught up on what was missed.");
  }
}

// Run `load` now, and again once reconnected if the connection dropped meanwhile.
export async function reliably(load) {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await load();
    } catch (error) {
      // An answer from the server (such as 404) is final; a failed request is retried.
      if (!live.rc || live.rc.state === "closed" || (error.status && error.status < 500)) throw error;
      await new Promise((resolve) => {
        if (live.rc.state === "connected") setTimeout(resolve, 500);
        else {
          const stop = live.rc.on("state", ({ state: now }) => { if (now === "connected") { stop(); resolve(); } });
        }
      });
    }
  }
  return load();
}

// Subscribe to `room`, then load its state; on `recovered: false`, load it again.
export function follow(room, onEvent, load) {
  const sub = live.rc.subscribe(room);
  sub.on("*", onEvent);
  sub.onRecovery(({ recovered }) => {
    if (recovered) return;
    reliably(load).then(() => {
      if (room.startsWith("team:")) banner("Reconnected: the board was reloaded, as missed updates could not be replayed.", "info");
    }).catch(() => {});
  });
  sub.ready.then(() => reliably(load), (error) => toast(`Cannot follow ${room}: ${error.message}`, "error"));
  return sub;
}
