// The tracker's page: a team's board, an issue with its comments, presence, typing,
// notifications and an activity feed, kept live by roomcast.js.
//
// State comes from the REST API; changes arrive as events. The page subscribes to a
// room first and loads its state over REST second, so that nothing falls between the
// two: events that arrive meanwhile are applied by version and by id. roomcast.js
// reconnects by itself and resubscribes with each room's last position; when it says a
// room could not be recovered (`recovered: false`), the page reloads that room's state.
// Every string the page did not write itself goes through textContent.
//
// This module signs in and out and wires the page's controls; the rest is split by
// concern, native ES modules without a build step: state.js (what the page knows),
// dom.js (elements and toasts), api.js (REST and the token provider), connection.js
// (the hub), board.js, issue.js (the open issue) and feed.js (activity, notifications).

import { live, SESSION_KEY, state } from "./state.js";
import { $, avatar, banner, person } from "./dom.js";
import { api, signIn } from "./api.js";
import { connect } from "./connection.js";
import { applyIssue, renderBoard, renderTeams, showTeam } from "./board.js";
import { closeIssue, renderComments, renderIssue, stoppedTyping, typed } from "./issue.js";
import { renderActivity, renderNotifications } from "./feed.js";

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
  connect(signOut);
  showTeam(state.workspace.teams[0].id);
}

function signOut(message = "") {
  if (live.rc) live.rc.close();
  live.rc = null;
  live.subs = {};
  if (state.token && !message) fetch("/api/v1/logout", { method: "POST", headers: { Authorization: `Bearer ${state.token}` } });
  sessionStorage.removeItem(SESSION_KEY);
  Object.assign(state, { user: null, token: null, workspace: null, team: null, open: null });
  state.issues.clear();
  state.titles.clear();
  $("#issue-panel").hidden = true;
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
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
  live.rc.close();
  banner("Offline for 10 s: changes made meanwhile arrive when the page reconnects.", "warn");
  setTimeout(() => {
    button.disabled = false;
    banner("");
    if (live.rc) live.rc.connect();
  }, 10_000);
});

setInterval(() => { if (state.workspace) renderActivity(); }, 30_000);

const remembered = sessionStorage.getItem(SESSION_KEY);
if (remembered) start(remembered).catch(() => signOut());
