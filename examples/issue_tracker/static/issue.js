// The open issue: its fields, its comments, who else is viewing it and who is typing,
// kept live by the issue room's events. Typing is published here, ephemeral.

import { live, PRIORITY_NAMES, state, STATUS_NAMES, TYPING_EVERY_MS, TYPING_SHOWN_MS } from "./state.js";
import { $, ago, avatar, firstName, h, person, toast } from "./dom.js";
import { api } from "./api.js";
import { reliably } from "./connection.js";
import { renderBoard } from "./board.js";

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

export async function openIssue(id) {
  if (state.open && state.open.issue.id === id) return;
  closeIssue();
  const room = `issue:${id}`;
  state.open = { issue: state.issues.get(id), comments: new Map(), viewers: new Map(), typing: new Map() };
  const panel = $("#issue-panel");
  panel.hidden = false;
  panel.dataset.issue = id;
  delete panel.dataset.loaded;
  renderIssue();
  const sub = live.rc.subscribe(room);
  live.subs.issue = sub;
  sub.on("*", onIssueEvent);
  const load = async () => {
    const [issue, members] = await Promise.all([api("GET", `/api/v1/issues/${id}`, undefined, { quiet: true }), live.rc.presence(room)]);
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
  // Refused when resubscribing after a reconnect: the issue is gone (an in-memory
  // server restarted without it) or this user may no longer see it.
  sub.onEnd((error) => {
    if (!error || !state.open || state.open.issue.id !== id) return;
    toast(`${state.open.issue.key} is no longer available: ${error.message}.`);
    closeIssue();
  });
  sub.onRecovery(({ recovered }) => {
    if (recovered) return;
    reliably(load).catch((error) => {
      // Gone with a restart of an in-memory server: its id names nothing any more.
      if (error.status === 404 && state.open && state.open.issue.id === id) {
        toast(`${state.open.issue.key} is no longer there: the server restarted without its data.`);
        closeIssue();
      }
    });
  });
  try {
    await sub.ready;
    await reliably(load);
  } catch (error) {
    toast(`Cannot open this issue: ${error.message}`, "error");
    closeIssue();
  }
}

export function closeIssue() {
  const open = state.open;
  if (!open) return;
  for (const timer of open.typing.values()) clearTimeout(timer);
  if (live.subs.issue) live.subs.issue.unsubscribe().catch(() => {});
  live.subs.issue = null;
  state.open = null;
  $("#issue-panel").hidden = true;
  delete $("#issue-panel").dataset.issue;
  renderBoard();
}

function options(select, entries, value) {
  select.replaceChildren(...entries.map(([key, label]) => h("option", { value: key }, label)));
  select.value = value === null ? "" : value;
}

export function renderIssue() {
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
  // An archived issue is read-only (the API refuses changes to it): its fields are
  // shown, not offered, and it takes no comments.
  const readOnly = Boolean(issue.archived);
  $("#issue-panel").dataset.archived = String(readOnly);
  for (const id of ["#issue-status", "#issue-priority", "#issue-assignee", "#issue-project"]) $(id).disabled = readOnly;
  const archived = $("#issue-archived");
  archived.hidden = !readOnly;
  archived.replaceChildren(...(readOnly ? [h("strong", {}, "Archived"),
    " · read-only: it is no longer on the board, and can no longer be changed or commented on."] : []));
  $("#archive-issue").hidden = readOnly;
  $("#new-comment").hidden = readOnly;
  if (readOnly) $("#comment-body").blur();
  renderComments();
  renderViewers();
}

export function renderComments(flash = null) {
  const open = state.open;
  if (!open) return;
  $("#comments").replaceChildren(...[...open.comments.values()].map((c) => {
    const own = c.author === state.user && !open.issue.archived;
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

// Who else views the open issue: unknown while offline, asked again once reconnected.
export function viewersUnknown() {
  if (!state.open) return;
  state.open.viewers = new Map();
  for (const timer of state.open.typing.values()) clearTimeout(timer);
  state.open.typing.clear();
  renderViewers();
  renderTyping();
}

export async function refreshViewers() {
  const open = state.open;
  if (!open || !live.rc || live.rc.state !== "connected") return;
  let members;
  try {
    members = await live.rc.presence(`issue:${open.issue.id}`);
  } catch {
    return;
  }
  if (state.open !== open) return;
  open.viewers = new Map();
  for (const member of members) open.viewers.set(member.userId, (open.viewers.get(member.userId) || 0) + 1);
  renderViewers();
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
export function typed() {
  if (!state.open || !live.rc || live.rc.state !== "connected") return;
  const now = Date.now();
  if (now - lastTyping < TYPING_EVERY_MS) return;
  lastTyping = now;
  // Ephemeral: never kept in history, so nobody is told later that someone typed.
  live.rc.publish(`issue:${state.open.issue.id}`, "user.typing", { typing: true }, { ephemeral: true }).catch(() => {});
}

export function stoppedTyping() {
  if (!lastTyping || !state.open || !live.rc || live.rc.state !== "connected") return;
  lastTyping = 0;
  live.rc.publish(`issue:${state.open.issue.id}`, "user.typing", { typing: false }, { ephemeral: true }).catch(() => {});
}
