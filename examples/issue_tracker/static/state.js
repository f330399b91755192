// What the page knows: the signed-in user, the workspace, the board, the open issue,
// and the live connection with its subscriptions. Every module reads and changes it
// here; the functions that draw it are in board.js, issue.js and feed.js.

export const STATUS_NAMES = {
  backlog: "Backlog", todo: "Todo", in_progress: "In progress", in_review: "In review", done: "Done",
};
export const PRIORITY_NAMES = { none: "No priority", urgent: "Urgent", high: "High", medium: "Medium", low: "Low" };
export const PROJECT_STATES = { planned: "Planned", started: "In progress", paused: "Paused", completed: "Completed" };
export const TYPING_EVERY_MS = 2000;   // at most one typing event per this, while typing
export const TYPING_SHOWN_MS = 4000;   // how long one keeps the indicator on
export const SESSION_KEY = "tracker.user";

export const state = {
  user: null,           // the signed-in user's id
  token: null,          // the current token, for REST calls
  freshToken: null,     // the sign-in's token, until the first connect uses it
  workspace: null,      // GET /api/v1/workspace
  team: null,           // the team whose board is shown
  issues: new Map(),    // id -> issue (with `comments`: the count)
  gone: new Set(),      // ids of issues archived or deleted: later events do not revive them
  titles: new Map(),    // id -> title of every issue of the user's teams the page has seen
  activity: [],         // newest last
  notifications: [],    // newest last
  unread: 0,
  open: null,           // {issue, comments: Map, viewers: Map userId -> count, typing: Map userId -> timer}
};

// The connection to the hub (roomcast.js), and its subscriptions by room kind
// (workspace, team, user, issue).
export const live = { rc: null, subs: {} };
