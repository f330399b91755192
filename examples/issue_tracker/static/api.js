// The REST API, with the current token; the token provider roomcast.js calls too.

import { state } from "./state.js";
import { toast } from "./dom.js";

export async function signIn(user) {
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
export async function tokenProvider() {
  if (state.freshToken) {
    // The token of the sign-in that just happened: no need for another one.
    const token = state.freshToken;
    state.freshToken = null;
    return token;
  }
  return (await signIn(state.user)).token;
}

// `quiet`: the caller tells the user itself when the server says no.
export async function api(method, path, body, { quiet = false } = {}) {
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
      if (!quiet) toast(data.error || `${method} ${path}: ${response.status}`, "error");
      throw Object.assign(new Error(data.error), { status: response.status });
    }
    return data;
  }
}
