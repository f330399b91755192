// Building and showing things: elements, avatars, times, toasts and the banner. Every
// string the page did not write itself goes through a text node, never innerHTML.

import { state } from "./state.js";

export const $ = (selector) => document.querySelector(selector);

export function h(tag, props = {}, ...children) {
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

export function person(id) {
  return (state.workspace && state.workspace.users[id]) || { id, name: id };
}

function initials(id) {
  return person(id).name.split(/\s+/).map((part) => part[0]).join("").slice(0, 2).toUpperCase();
}

export function avatar(id, extra = "") {
  return h("span", { class: `avatar ${extra}`, dataset: { avatar: id }, title: person(id).name }, initials(id));
}

export function firstName(id) {
  return id === state.user ? "You" : person(id).name.split(/\s+/)[0];
}

export function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export function toast(text, kind = "") {
  const node = h("div", { class: `toast ${kind}` }, text);
  $("#toasts").append(node);
  setTimeout(() => node.classList.add("leaving"), 4500);
  setTimeout(() => node.remove(), 5000);
}

export function banner(text, kind = "") {
  const node = $("#banner");
  node.textContent = text;
  node.className = `banner ${kind}`;
  node.hidden = !text;
}
