// A team's board: its columns by status, its cards, the cycle, the projects and who is
// on the board, kept live by the team room's events.

import { live, PRIORITY_NAMES, PROJECT_STATES, state, STATUS_NAMES } from "./state.js";
import { $, avatar, firstName, h, person, toast } from "./dom.js";
import { api } from "./api.js";
import { follow } from "./connection.js";
import { closeIssue, openIssue, refreshViewers, viewersUnknown } from "./issue.js";
import { renderActivity } from "./feed.js";

export function renderTeams() {
  $("#teams").replaceChildren(...state.workspace.teams.map((team) => h("li", {},
    h("button", {
      type: "button", class: team.id === state.team ? "nav active" : "nav", dataset: { team: team.id },
      onclick: () => showTeam(team.id),
    }, h("span", { class: "team-key" }, team.key), team.name))));
}

export function showTeam(teamId) {
  if (state.team === teamId) return;
  closeIssue();
  if (live.subs.team) live.subs.team.unsubscribe();
  state.team = teamId;
  state.issues.clear();
  state.gone = new Set();
  renderTeams();
  const team = state.workspace.teams.find((t) => t.id === teamId);
  $("#board-title").textContent = team.name;
  renderSidebar();
  renderBoard();
  live.subs.team = follow(`team:${teamId}`, onTeamEvent, loadBoard);
  live.subs.team.on("presence.join", renderOnline);
  live.subs.team.on("presence.leave", renderOnline);
}

async function loadBoard() {
  const team = state.team;
  // A load replaces everything the page keeps for the board, the ids it was told are
  // gone included: after a restart on the in-memory store those are from another
  // store. Only what is archived or deleted while this request runs stays gone.
  const gone = new Set();
  state.gone = gone;
  const issues = await api("GET", `/api/v1/teams/${team}/issues`);
  if (team !== state.team || gone !== state.gone) return;
  // What REST says is the truth as of now; events already applied with a higher
  // version (they raced the request) are kept.
  const fresh = new Map();
  for (const issue of issues) {
    if (gone.has(issue.id)) continue;
    const known = state.issues.get(issue.id);
    fresh.set(issue.id, known && known.version > issue.version ? known : issue);
    state.titles.set(issue.id, issue.title);
  }
  state.issues = fresh;
  renderBoard();
  renderActivity();
  renderOnline();
}

export function applyIssue(issue) {
  if (issue.team !== state.team || state.gone.has(issue.id)) return false;
  const known = state.issues.get(issue.id);
  if (known && known.version >= issue.version) return false;
  state.issues.set(issue.id, { ...issue, comments: known ? known.comments : 0 });
  state.titles.set(issue.id, issue.title);
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

export function renderBoard(flash = null) {
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

// While the page is not connected, who is on the board is not known: the list says
// so instead of showing who was there before; reconnected, it is asked again.
export function presenceUnknown() {
  const list = $("#online");
  list.dataset.stale = "true";
  list.replaceChildren(h("li", { class: "empty" }, "Not known while offline"));
  viewersUnknown();
}

export function refreshPresence() {
  renderOnline();
  refreshViewers();
}

async function renderOnline() {
  if (!live.rc || !live.subs.team || live.rc.state !== "connected") return;
  const room = `team:${state.team}`;
  let members;
  try {
    members = await live.rc.presence(room);
  } catch {
    return;
  }
  if (room !== `team:${state.team}`) return;
  const users = [...new Set(members.map((m) => m.userId))];
  delete $("#online").dataset.stale;
  $("#online").replaceChildren(...users.map((id) => h("li", { dataset: { user: id } },
    avatar(id, "small"), h("span", {}, id === state.user ? `${person(id).name} (you)` : person(id).name))));
}
