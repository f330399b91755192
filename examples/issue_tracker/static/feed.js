// The workspace's activity feed and the user's notifications, from the workspace room
// and the user's own room.

import { state, STATUS_NAMES } from "./state.js";
import { $, ago, avatar, firstName, h, person, toast } from "./dom.js";
import { api } from "./api.js";
import { openIssue } from "./issue.js";

export async function loadActivity() {
  state.activity = await api("GET", "/api/v1/activity");
  renderActivity();
}

export async function loadNotifications() {
  state.notifications = await api("GET", "/api/v1/notifications");
  renderNotifications();
}

export function onFeedEvent(event) {
  if (event.type !== "activity.created") return;
  const entry = event.payload.entry;
  if (state.activity.some((e) => e.id === entry.id)) return;
  state.activity.push(entry);
  state.activity = state.activity.slice(-50);
  renderActivity(entry.id);
}

export function onUserEvent(event) {
  if (event.type !== "notification.created") return;
  const note = event.payload.notification;
  if (state.notifications.some((n) => n.id === note.id)) return;
  state.notifications.push(note);
  state.unread += 1;
  renderNotifications();
  toast(notificationText(note), "notice");
}

const VERBS = { created: "created", archived: "archived", deleted: "deleted", commented: "commented on" };

function activityText(entry) {
  if (entry.verb === "updated") {
    if (entry.changes.length === 1 && entry.changes[0] === "status") return `moved ${entry.key} to ${STATUS_NAMES[entry.status]}`;
    return `updated the ${entry.changes.join(", ")} of ${entry.key}`;
  }
  return `${VERBS[entry.verb] || entry.verb} ${entry.key}`;
}

export function renderActivity(flash = null) {
  $("#activity").replaceChildren(...state.activity.slice().reverse().map((entry) => {
    // The feed names issues by key (members of other teams read it too); the title
    // is the one the page knows from its own team's board, whenever it knows it.
    const title = state.titles.get(entry.issueId);
    return h("li", { class: entry.id === flash ? "flash" : "", dataset: { entry: entry.id } },
      avatar(entry.actor, "small"),
      h("div", {},
        h("div", {}, h("strong", {}, firstName(entry.actor)), " ", activityText(entry)),
        title ? h("div", { class: "feed-title" }, title) : null,
        h("div", { class: "muted" }, `${entry.teamName} · ${ago(entry.at)}`)));
  }));
  if (!state.activity.length) $("#activity").append(h("li", { class: "empty" }, "Nothing has happened yet."));
}

function notificationText(note) {
  const who = person(note.actor).name;
  return note.kind === "assigned" ? `${who} assigned you ${note.key}: ${note.title}` :
    `${who} mentioned you in ${note.key}: ${note.title}`;
}

export function renderNotifications() {
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
