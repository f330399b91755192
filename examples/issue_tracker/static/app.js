// The tracker's page: a team's board, an issue with its comments, presence, typing,
// notifications and an activity feed, kept live by roomcast.js.
//
// State comes from the REST API; changes arrive as events. The page subscribes to a
// room first and loads its state over REST second, so that nothing falls between the
// two: events that arrive meanwhile are applied by version and by id. roomcast.js
// reconnects by itself and resubscribes with each room's last position; when it says a
// room could not be recovered (`recovered: false`), the page reloads that room's state.
// Every string the page did not write itself goes through textContent.

import { Roomcast } from "/roomcast.js";

const $ = (selector) => document.querySelector(selector);

const STATUS_NAMES = {
  backlog: "Backlog", todo: "Todo", in_progress: "In progress", in_review: "In review", done: "Done",
};
const PRIORITY_NAMES = { none: "No priority", urgent: "Urgent", high: "High", medium: "Medium", low: "Low" };
const PROJECT_STATES = { planned: "Planned", started: "In progress", paused: "Paused", completed: "Completed" };
const TYPING_EVERY_MS = 2000;   // at most one typing event per this, while typing
const TYPING_SHOWN_MS = 4000;   // how long one keeps the indicator on
const SESSION_KEY = "tracker.user";

// ------------------------------------------------------------------------- state

const state = {
  user: null,           // the signed-in user's id
  token: null,          // the current token, for REST calls
  freshToken: null,     // the sign-in's token, until the first connect uses it
  workspace: null,      // GET /api/v1/workspace
  team: null,           // the team whose board is shown
  issues: new Map(),    // id -> issue (with `comments`: the count)
  gone: new Set(),      // ids of issues archived or deleted: later events do not revive them
  activity: [],         // newest last
  notifications: [],    // newest last
  unread: 0,
  open: null,           // {issue, comments: Map, viewers: Map userId -> count, typing: Map userId -> timer}
};

let rc = null;
let subs = {};          // room kind -> Subscription (workspace, team, user, issue)

// ------------------------------------------------------------------------- helpers

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function person(id) {
  return (state.workspace && state.workspace.users[id]) || { id, name: id };
}

function initials(id) {
  return person(id).name.split(/\s+/).map((part) => part[0]).join("").slice(0, 2).toUpperCase();
}

function avatar(id, extra = "") {
  return h("span", { class: `avatar ${extra}`, dataset: { avatar: id }, title: person(id).name }, initials(id));
}

function firstName(id) {
  return id === state.user ? "You" : person(id).name.split(/\s+/)[0];
}

function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

function toast(text, kind = "") {
  const node = h("div", { class: `toast ${kind}` }, text);
  $("#toasts").append(node);
  setTimeout(() => node.classList.add("leaving"), 4500);
  setTimeout(() => node.remove(), 5000);
}

function banner(text, kind = "") {
  const node = $("#banner");
  node.textContent = text;
  node.className = `banner ${kind}`;
  node.hidden = !text;
}

// ------------------------------------------------------------------------- REST

async function signIn(user) {
  const response = await fetch("/api/v1/login", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user }),
  });
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  const session = await response.json();
  state.token = session.token;
  return session;
}

// The token provider roomcast.js calls for each (re)connect and refresh. A demo signs in
// again by name; a real app asks its backend for a new token with a session cookie.
async function tokenProvider() {
  if (state.freshToken) {
    // The token of the sign-in that just happened: no need for another one.
    const token = state.freshToken;
    state.freshToken = null;
    return token;
  }
  return (await signIn(state.user)).token;
}

async function api(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && attempt === 0) {
      await tokenProvider(); // a token from before a server restart: get a new one, once
      continue;
    }
    if (response.status === 204) return null;
    const data = await response.json();
    if (!response.ok) {
      toast(data.error || `${method} ${path}: ${response.status}`, "error");
      throw new Error(data.error);
    }
    return data;
  }
}

// ------------------------------------------------------------------------- connection

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

function connect() {
  rc = new Roomcast(new URL("/ws", location.href), { token: tokenProvider });
  rc.on("state", (change) => {
    const wasLost = Boolean($("#connection").dataset.lost);
    showConnection(change);
    if (change.state === "connected" && wasLost) toast("Back online: catching up.");
    if (change.state === "closed" && change.error && change.error.code === "unauthorized") {
      signOut("Your session ended: sign in again.");
    }
  });
  rc.on("error", (error) => console.warn("roomcast:", error.code, error.message));
  // Each room's subscription handles its own recovery notice (see follow()).
  subs.workspace = follow(`workspace:${state.workspace.workspace.id}`, onFeedEvent, loadActivity);
  subs.user = follow(`user:${state.user}`, onUserEvent, loadNotifications);
  rc.connect();
}

// Run `load` now, and again once reconnected if the connection dropped meanwhile.
async function reliably(load) {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await load();
    } catch (error) {
      if (!rc || rc.state === "closed") throw error;
      await new Promise((resolve) => {
        if (rc.state === "connected") setTimeout(resolve, 500);
        else {
          const stop = rc.on("state", ({ state: now }) => { if (now === "connected") { stop(); resolve(); } });
        }
      });
    }
  }
  return load();
}

// Subscribe to `room`, then load its state; on `recovered: false`, load it again.
function follow(room, onEvent, load) {
  const sub = rc.subscribe(room);
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

// ------------------------------------------------------------------------- workspace

async function start(user) {
  state.user = user;
  state.freshToken = (await signIn(user)).token;
  state.workspace = await api("GET", "/api/v1/workspace");
  sessionStorage.setItem(SESSION_KEY, user);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#workspace-name").textContent = state.workspace.workspace.name;
  $("#me-avatar").replaceWith(avatar(user, "me-avatar"));
  $("#me-name").textContent = person(user).name;
  renderTeams();
  connect();
  showTeam(state.workspace.teams[0].id);
}

function signOut(message = "") {
  if (rc) rc.close();
  rc = null;
  subs = {};
  if (state.token && !message) fetch("/api/v1/logout", { method: "POST", headers: { Authorization: `Bearer ${state.token}` } });
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, { user: null, token: null, workspace: null, team: null, open: null });
  state.issues.clear();
  $("#issue-panel").hidden = true;
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
}

function renderTeams() {
  $("#teams").replaceChildren(...state.workspace.teams.map((team) => h("li", {},
    h("button", {
      type: "button", class: team.id === state.team ? "nav active" : "nav", dataset: { team: team.id },
      onclick: () => showTeam(team.id),
    }, h("span", { class: "team-key" }, team.key), team.name))));
}

function showTeam(teamId) {
  if (state.team === teamId) return;
  closeIssue();
  if (subs.team) subs.team.unsubscribe();
  state.team = teamId;
  state.issues.clear();
  state.gone.clear();
  renderTeams();
  const team = state.workspace.teams.find((t) => t.id === teamId);
  $("#board-title").textContent = team.name;
  renderSidebar();
  renderBoard();
  subs.team = follow(`team:${teamId}`, onTeamEvent, loadBoard);
  subs.team.on("presence.join", renderOnline);
  subs.team.on("presence.leave", renderOnline);
}

async function loadBoard() {
  const team = state.team;
  const issues = await api("GET", `/api/v1/teams/${team}/issues`);
  if (team !== state.team) return;
  // What REST says is the truth as of now; events already applied with a higher
  // version (they raced the request) are kept.
  const fresh = new Map();
  for (const issue of issues) {
    const known = state.issues.get(issue.id);
    fresh.set(issue.id, known && known.version > issue.version ? known : issue);
  }
  state.issues = fresh;
  renderBoard();
  renderOnline();
}

async function loadActivity() {
  state.activity = await api("GET", "/api/v1/activity");
  renderActivity();
}

async function loadNotifications() {
  state.notifications = await api("GET", "/api/v1/notifications");
  renderNotifications();
}

// ------------------------------------------------------------------------- events

function applyIssue(issue) {
  if (issue.team !== state.team || state.gone.has(issue.id)) return false;
  const known = state.issues.get(issue.id);
  if (known && known.version >= issue.version) return false;
  state.issues.set(issue.id, { ...issue, comments: known ? known.comments : 0 });
  return true;
}

function removeIssue(id) {
  state.gone.add(id);
  state.issues.delete(id);
}

function onTeamEvent(event) {
  const p = event.payload || {};
  const mine = event.userId === state.user;
  switch (event.type) {
    case "issue.created":
      if (applyIssue(p.issue)) {
        renderBoard(p.issue.id);
        if (!mine) toast(`${firstName(event.userId)} created ${p.issue.key}: ${p.issue.title}`);
      }
      break;
    case "issue.updated":
      if (applyIssue(p.issue)) renderBoard(p.issue.id);
      break;
    case "issue.archived":
    case "issue.deleted": {
      const id = p.issue ? p.issue.id : p.issueId;
      const key = p.issue ? p.issue.key : p.key;
      if (state.issues.has(id) && !mine) toast(`${firstName(event.userId)} ${event.type === "issue.archived" ? "archived" : "deleted"} ${key}`);
      removeIssue(id);
      renderBoard();
      break;
    }
    case "comment.created":
    case "comment.deleted": {
      const id = p.comment ? p.comment.issueId : p.issueId;
      const issue = state.issues.get(id);
      if (issue) {
        issue.comments = Math.max(0, issue.comments + (event.type === "comment.created" ? 1 : -1));
        renderBoard();
      }
      break;
    }
    case "project.updated":
      replaceIn(state.workspace.projects, p.project);
      renderSidebar();
      break;
    case "cycle.updated":
      replaceIn(state.workspace.cycles, p.cycle);
      renderSidebar();
      break;
  }
}

function replaceIn(list, item) {
  const index = list.findIndex((x) => x.id === item.id);
  if (index < 0) list.push(item);
  else if (list[index].version < item.version) list[index] = item;
}

function onFeedEvent(event) {
  if (event.type !== "activity.created") return;
  const entry = event.payload.entry;
  if (state.activity.some((e) => e.id === entry.id)) return;
  state.activity.push(entry);
  state.activity = state.activity.slice(-50);
  renderActivity(entry.id);
}

function onUserEvent(event) {
  if (event.type !== "notification.created") return;
  const note = event.payload.notification;
  if (state.notifications.some((n) => n.id === note.id)) return;
  state.notifications.push(note);
  state.unread += 1;
  renderNotifications();
  toast(notificationText(note), "notice");
}

function onIssueEvent(event) {
  const open = state.open;
  if (!open || event.room !== `issue:${open.issue.id}`) return;
  const p = event.payload || {};
  switch (event.type) {
    case "issue.updated":
      if (p.issue.version > open.issue.version) {
        open.issue = p.issue;
        renderIssue();
      }
      break;
    case "issue.archived":
      open.issue = p.issue;
      renderIssue();
      break;
    case "issue.deleted":
      closeIssue();
      toast(`${p.key} was deleted by ${firstName(event.userId)}`);
      break;
    case "comment.created":
    case "comment.updated": {
      const known = open.comments.get(p.comment.id);
      if (!known || known.version < p.comment.version) open.comments.set(p.comment.id, p.comment);
      if (event.type === "comment.created") stopTyping(event.userId);
      renderComments(p.comment.id);
      break;
    }
    case "comment.deleted":
      open.comments.delete(p.commentId);
      renderComments();
      break;
    case "user.typing":
      if (event.userId && event.userId !== state.user) {
        if (p.typing === false) stopTyping(event.userId);
        else startTyping(event.userId);
      }
      break;
    case "presence.join":
    case "presence.leave": {
      const id = p.userId;
      const count = (open.viewers.get(id) || 0) + (event.type === "presence.join" ? 1 : -1);
      if (count > 0) open.viewers.set(id, count);
      else open.viewers.delete(id);
      if (event.type === "presence.leave") stopTyping(id);
      renderViewers();
      break;
    }
  }
}

// ------------------------------------------------------------------------- issue panel

async function openIssue(id) {
  if (state.open && state.open.issue.id === id) return;
  closeIssue();
  const room = `issue:${id}`;
  state.open = { issue: state.issues.get(id), comments: new Map(), viewers: new Map(), typing: new Map() };
  const panel = $("#issue-panel");
  panel.hidden = false;
  panel.dataset.issue = id;
  delete panel.dataset.loaded;
  renderIssue();
  const sub = rc.subscribe(room);
  subs.issue = sub;
  sub.on("*", onIssueEvent);
  const load = async () => {
    const [issue, members] = await Promise.all([api("GET", `/api/v1/issues/${id}`), rc.presence(room)]);
    if (!state.open || state.open.issue.id !== id) return;
    const { comments, ...fields } = issue;
    if (!state.open.issue || state.open.issue.version <= fields.version) state.open.issue = fields;
    for (const comment of comments) {
      const known = state.open.comments.get(comment.id);
      if (!known || known.version < comment.version) state.open.comments.set(comment.id, comment);
    }
    state.open.viewers = new Map();
    for (const member of members) state.open.viewers.set(member.userId, (state.open.viewers.get(member.userId) || 0) + 1);
    renderIssue();
    panel.dataset.loaded = "true";
  };
  sub.onRecovery(({ recovered }) => { if (!recovered) reliably(load).catch(() => {}); });
  try {
    await sub.ready;
    await reliably(load);
  } catch (error) {
    toast(`Cannot open this issue: ${error.message}`, "error");
    closeIssue();
  }
}

function closeIssue() {
  const open = state.open;
  if (!open) return;
  for (const timer of open.typing.values()) clearTimeout(timer);
  if (subs.issue) subs.issue.unsubscribe().catch(() => {});
  subs.issue = null;
  state.open = null;
  $("#issue-panel").hidden = true;
  delete $("#issue-panel").dataset.issue;
  renderBoard();
}

function options(select, entries, value) {
  select.replaceChildren(...entries.map(([key, label]) => h("option", { value: key }, label)));
  select.value = value === null ? "" : value;
}

function renderIssue() {
  const open = state.open;
  if (!open || !open.issue) return;
  const issue = open.issue;
  $("#issue-key").textContent = issue.key;
  $("#issue-title").textContent = issue.title;
  options($("#issue-status"), Object.entries(STATUS_NAMES), issue.status);
  options($("#issue-priority"), Object.entries(PRIORITY_NAMES), issue.priority);
  const team = state.workspace.teams.find((t) => t.id === issue.team);
  options($("#issue-assignee"), [["", "Unassigned"], ...team.members.map((id) => [id, person(id).name])], issue.assignee);
  const projects = state.workspace.projects.filter((p) => p.team === issue.team);
  options($("#issue-project"), [["", "No project"], ...projects.map((p) => [p.id, p.name])], issue.project);
  const archived = $("#issue-archived");
  archived.hidden = !issue.archived;
  archived.textContent = issue.archived ? "This issue is archived: it is no longer on the board." : "";
  $("#archive-issue").hidden = issue.archived;
  renderComments();
  renderViewers();
}

function renderComments(flash = null) {
  const open = state.open;
  if (!open) return;
  $("#comments").replaceChildren(...[...open.comments.values()].map((c) => {
    const own = c.author === state.user;
    const body = h("div", { class: "comment-body" }, c.body);
    const item = h("li", { class: c.id === flash ? "comment flash" : "comment", dataset: { comment: c.id } },
      avatar(c.author),
      h("div", { class: "comment-main" },
        h("div", { class: "comment-meta" },
          h("strong", {}, person(c.author).name), " ",
          h("span", { class: "muted" }, ago(c.createdAt)),
          c.editedAt ? h("span", { class: "muted edited" }, " · edited") : null,
          own ? h("span", { class: "comment-actions" },
            h("button", { type: "button", class: "link", dataset: { action: "edit" }, onclick: () => editComment(item, c) }, "Edit"),
            h("button", { type: "button", class: "link", dataset: { action: "delete" }, onclick: () => api("DELETE", `/api/v1/comments/${c.id}`) }, "Delete"),
          ) : null),
        body));
    return item;
  }));
  if (!open.comments.size) $("#comments").append(h("li", { class: "empty" }, "No comments yet."));
}

function editComment(item, comment) {
  const area = h("textarea", { rows: 3, maxlength: 4000, class: "edit-body", "aria-label": "Edit comment" });
  area.value = comment.body;
  const form = h("form", { class: "edit-comment", onsubmit: async (e) => {
    e.preventDefault();
    await api("PATCH", `/api/v1/comments/${comment.id}`, { body: area.value });
  } }, area, h("div", {}, h("button", { type: "submit", class: "primary" }, "Save"),
    h("button", { type: "button", class: "ghost", onclick: () => renderComments() }, "Cancel")));
  item.querySelector(".comment-body").replaceWith(form);
  area.focus();
}

function renderViewers() {
  const open = state.open;
  if (!open) return;
  const others = [...open.viewers.keys()].filter((id) => id !== state.user);
  const node = $("#viewers");
  if (!others.length) {
    node.replaceChildren();
    return;
  }
  node.replaceChildren(h("span", { class: "muted" }, "Also viewing"), ...others.map((id) => avatar(id, "small")));
}

function startTyping(userId) {
  const open = state.open;
  clearTimeout(open.typing.get(userId));
  open.typing.set(userId, setTimeout(() => stopTyping(userId), TYPING_SHOWN_MS));
  renderTyping();
}

function stopTyping(userId) {
  const open = state.open;
  if (!open || !open.typing.has(userId)) return;
  clearTimeout(open.typing.get(userId));
  open.typing.delete(userId);
  renderTyping();
}

function renderTyping() {
  const names = [...state.open.typing.keys()].map(firstName);
  $("#typing").textContent = !names.length ? "" :
    names.length === 1 ? `${names[0]} is typing…` : `${names.join(" and ")} are typing…`;
}

let lastTyping = 0;
function typed() {
  if (!state.open || !rc || rc.state !== "connected") return;
  const now = Date.now();
  if (now - lastTyping < TYPING_EVERY_MS) return;
  lastTyping = now;
  // Ephemeral: never kept in history, so nobody is told later that someone typed.
  rc.publish(`issue:${state.open.issue.id}`, "user.typing", { typing: true }, { ephemeral: true }).catch(() => {});
}

function stoppedTyping() {
  if (!lastTyping || !state.open || !rc || rc.state !== "connected") return;
  lastTyping = 0;
  rc.publish(`issue:${state.open.issue.id}`, "user.typing", { typing: false }, { ephemeral: true }).catch(() => {});
}

// ------------------------------------------------------------------------- rendering

const PRIORITY_ICON = { urgent: "!", high: "▲", medium: "■", low: "▼", none: "–" };

function bubble() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", "M2 3.5A1.5 1.5 0 0 1 3.5 2h9A1.5 1.5 0 0 1 14 3.5v6a1.5 1.5 0 0 1-1.5 1.5H6l-3 3v-3h.5A1.5 1.5 0 0 1 2 9.5Z");
  svg.append(path);
  return svg;
}

function card(issue, flash) {
  const open = state.open && state.open.issue && state.open.issue.id === issue.id;
  const project = issue.project && state.workspace.projects.find((p) => p.id === issue.project);
  return h("li", {
    class: `card${flash === issue.id ? " flash" : ""}${open ? " selected" : ""}`,
    dataset: { issue: issue.id }, tabindex: 0, draggable: "true",
    onclick: () => openIssue(issue.id),
    onkeydown: (e) => { if (e.key === "Enter") openIssue(issue.id); },
    ondragstart: (e) => e.dataTransfer.setData("text/plain", issue.id),
  },
  h("div", { class: "card-top" },
    h("span", { class: "key" }, issue.key),
    issue.assignee ? avatar(issue.assignee, "small") : h("span", { class: "avatar small empty", title: "Unassigned" }, "")),
  h("div", { class: "card-title" }, issue.title),
  h("div", { class: "card-meta" },
    h("span", { class: `priority p-${issue.priority}`, title: PRIORITY_NAMES[issue.priority] }, PRIORITY_ICON[issue.priority]),
    project ? h("span", { class: "tag" }, project.name) : null,
    issue.comments ? h("span", { class: "comments-count", title: "Comments" }, bubble(), String(issue.comments)) : null));
}

function renderBoard(flash = null) {
  const issues = [...state.issues.values()].filter((i) => !i.archived);
  $("#board-count").textContent = issues.length ? `${issues.length} issues` : "";
  $("#board").replaceChildren(...Object.entries(STATUS_NAMES).map(([status, name]) => {
    const column = issues.filter((i) => i.status === status);
    return h("div", {
      class: "column", dataset: { status },
      ondragover: (e) => { e.preventDefault(); e.currentTarget.classList.add("drop"); },
      ondragleave: (e) => e.currentTarget.classList.remove("drop"),
      ondrop: (e) => {
        e.preventDefault();
        e.currentTarget.classList.remove("drop");
        const id = e.dataTransfer.getData("text/plain");
        if (state.issues.get(id) && state.issues.get(id).status !== status) api("PATCH", `/api/v1/issues/${id}`, { status });
      },
    },
    h("header", {}, h("span", { class: `status-dot s-${status}` }), h("span", {}, name), h("span", { class: "count" }, column.length)),
    h("ul", { class: "cards" }, column.map((issue) => card(issue, flash))));
  }));
}

function day(iso) {
  return new Date(`${iso}T12:00:00`).toLocaleDateString("en", { month: "short", day: "numeric" });
}

function renderSidebar() {
  const team = state.team;
  const cycle = state.workspace.cycles.find((c) => c.team === team);
  $("#cycle").replaceChildren(...(cycle ? [
    h("strong", {}, cycle.name),
    h("span", { class: "muted" }, `${day(cycle.starts)} – ${day(cycle.ends)}`),
    h("p", {}, cycle.goal),
  ] : [h("span", { class: "muted" }, "No cycle")]));
  const projects = state.workspace.projects.filter((p) => p.team === team);
  $("#projects").replaceChildren(...projects.map((p) => h("li", { dataset: { project: p.id } },
    h("span", { class: `project-state ps-${p.state}` }), h("span", { class: "project-name" }, p.name),
    h("span", { class: "muted" }, PROJECT_STATES[p.state]))));
}

async function renderOnline() {
  if (!rc || !subs.team || rc.state !== "connected") return;
  const room = `team:${state.team}`;
  let members;
  try {
    members = await rc.presence(room);
  } catch {
    return;
  }
  if (room !== `team:${state.team}`) return;
  const users = [...new Set(members.map((m) => m.userId))];
  $("#online").replaceChildren(...users.map((id) => h("li", { dataset: { user: id } },
    avatar(id, "small"), h("span", {}, id === state.user ? `${person(id).name} (you)` : person(id).name))));
}

const VERBS = { created: "created", archived: "archived", deleted: "deleted", commented: "commented on" };

function activityText(entry) {
  if (entry.verb === "updated") {
    if (entry.changes.length === 1 && entry.changes[0] === "status") return `moved ${entry.key} to ${STATUS_NAMES[entry.status]}`;
    return `updated the ${entry.changes.join(", ")} of ${entry.key}`;
  }
  return `${VERBS[entry.verb] || entry.verb} ${entry.key}`;
}

function renderActivity(flash = null) {
  $("#activity").replaceChildren(...state.activity.slice().reverse().map((entry) => {
    const issue = state.issues.get(entry.issueId);
    return h("li", { class: entry.id === flash ? "flash" : "", dataset: { entry: entry.id } },
      avatar(entry.actor, "small"),
      h("div", {},
        h("div", {}, h("strong", {}, firstName(entry.actor)), " ", activityText(entry)),
        issue ? h("div", { class: "feed-title" }, issue.title) : null,
        h("div", { class: "muted" }, `${entry.teamName} · ${ago(entry.at)}`)));
  }));
  if (!state.activity.length) $("#activity").append(h("li", { class: "empty" }, "Nothing has happened yet."));
}

function notificationText(note) {
  const who = person(note.actor).name;
  return note.kind === "assigned" ? `${who} assigned you ${note.key}: ${note.title}` :
    `${who} mentioned you in ${note.key}: ${note.title}`;
}

function renderNotifications() {
  const badge = $("#bell-count");
  badge.hidden = state.unread === 0;
  badge.textContent = String(state.unread);
  const list = state.notifications.slice().reverse();
  $("#notification-list").replaceChildren(...(list.length ? list.map((note) => h("li", {
    dataset: { notification: note.id },
    onclick: () => { $("#notifications").hidden = true; if (state.issues.has(note.issueId)) openIssue(note.issueId); },
  }, avatar(note.actor, "small"), h("div", {}, h("div", {}, notificationText(note)), h("div", { class: "muted" }, ago(note.at)))))
    : [h("li", { class: "empty" }, "You're all caught up.")]));
}

// ------------------------------------------------------------------------- wiring

for (const button of document.querySelectorAll("[data-user]")) {
  button.addEventListener("click", () => start(button.dataset.user).catch((error) => {
    $("#login-error").textContent = `Cannot sign in: ${error.message}`;
  }));
}

$("#logout").addEventListener("click", () => signOut());

$("#new-issue").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("#title");
  const title = input.value.trim();
  if (!title) return;
  const issue = await api("POST", `/api/v1/teams/${state.team}/issues`, { title });
  input.value = "";
  if (applyIssue({ ...issue })) renderBoard(issue.id);
});

$("#close-issue").addEventListener("click", closeIssue);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeIssue(); });

for (const [id, field] of [["#issue-status", "status"], ["#issue-priority", "priority"], ["#issue-assignee", "assignee"], ["#issue-project", "project"]]) {
  $(id).addEventListener("change", (event) => {
    const value = event.target.value === "" ? null : event.target.value;
    api("PATCH", `/api/v1/issues/${state.open.issue.id}`, { [field]: value }).then((issue) => {
      if (state.open && issue.version > state.open.issue.version) {
        state.open.issue = issue;
        renderIssue();
      }
      if (applyIssue(issue)) renderBoard(issue.id);
    }).catch(() => renderIssue());
  });
}

$("#archive-issue").addEventListener("click", () => api("POST", `/api/v1/issues/${state.open.issue.id}/archive`));

$("#comment-body").addEventListener("input", typed);
$("#comment-body").addEventListener("blur", stoppedTyping);
$("#comment-body").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.metaKey || e.ctrlKey)) $("#new-comment").requestSubmit();
});
$("#new-comment").addEventListener("submit", async (event) => {
  event.preventDefault();
  const area = $("#comment-body");
  const body = area.value.trim();
  if (!body || !state.open) return;
  stoppedTyping();
  const comment = await api("POST", `/api/v1/issues/${state.open.issue.id}/comments`, { body });
  area.value = "";
  if (state.open && !state.open.comments.has(comment.id)) {
    state.open.comments.set(comment.id, comment);
    renderComments(comment.id);
  }
});

$("#bell").addEventListener("click", () => {
  const panel = $("#notifications");
  panel.hidden = !panel.hidden;
  $("#bell").setAttribute("aria-expanded", String(!panel.hidden));
  if (!panel.hidden) {
    state.unread = 0;
    renderNotifications();
  }
});

// Close the connection for ten seconds, as a network outage would, then catch up:
// roomcast.js resubscribes every room from its last position.
$("#go-offline").addEventListener("click", () => {
  const button = $("#go-offline");
  button.disabled = true;
  rc.close();
  banner("Offline for 10 s: changes made meanwhile arrive when the page reconnects.", "warn");
  setTimeout(() => {
    button.disabled = false;
    banner("");
    if (rc) rc.connect();
  }, 10_000);
});

setInterval(() => { if (state.workspace) renderActivity(); }, 30_000);

const remembered = sessionStorage.getItem(SESSION_KEY);
if (remembered) start(remembered).catch(() => signOut());
