// Herald's inbox bell, as a shop's page would build it: plain JS, no build step.
// A user token (never a service key) reads /v1/me/inbox and follows WS /v1/me/stream;
// the stream carries new notifications and read/deleted changes made in other tabs.
"use strict";

const TOKEN_KEY = "herald-user-token";
const state = { token: null, socket: null, retry: 0, items: new Map() };
const $ = (id) => document.getElementById(id);

function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, ...(options.headers || {}) };
  return fetch(path, { ...options, headers }).then(async (answer) => {
    if (answer.status === 401) { signOut("token refused — mint a fresh one"); throw new Error("401"); }
    if (!answer.ok) throw new Error(`${answer.status} ${await answer.text()}`);
    return answer.status === 204 ? null : answer.json();
  });
}

function setUnread(count) {
  const badge = $("unread");
  badge.textContent = String(count);
  badge.dataset.count = String(count);
  document.title = count ? `(${count}) Herald · inbox demo` : "Herald · inbox demo";
}

function setStatus(text) { $("status").textContent = text; }

function render(item, fresh = false) {
  let li = state.items.get(item.notification_id);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = item.notification_id;
    for (const part of ["title", "body", "time"]) {
      const span = document.createElement("span");
      span.className = part;
      li.appendChild(span);
    }
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mark-read";
    button.textContent = "Mark read";
    button.addEventListener("click", () => markRead(item.notification_id));
    li.appendChild(button);
    state.items.set(item.notification_id, li);
  }
  li.querySelector(".title").textContent = item.title;
  li.querySelector(".body").textContent = item.body;
  li.querySelector(".time").textContent = new Date(item.created_at * 1000).toLocaleString();
  li.dataset.createdAt = String(item.created_at);
  setRead(li, Boolean(item.read));
  if (fresh) li.classList.add("fresh");
  return li;
}

function setRead(li, read) {
  li.classList.toggle("read", read);
  li.classList.toggle("unread", !read);
}

function showList() {
  const list = $("items");
  const sorted = [...state.items.values()].sort(
    (a, b) => Number(b.dataset.createdAt) - Number(a.dataset.createdAt));
  list.replaceChildren(...sorted);
  $("empty").hidden = sorted.length > 0;
}

async function load() {
  const page = await api("/v1/me/inbox?limit=50");
  state.items.clear();
  for (const item of page.items) render(item);
  showList();
  setUnread(page.unread);
}

async function markRead(id) {
  const answer = await api(`/v1/me/inbox/${encodeURIComponent(id)}/read`, { method: "POST" });
  const li = state.items.get(id);
  if (li) setRead(li, true);
  setUnread(answer.unread);
}

async function markAllRead() {
  const answer = await api("/v1/me/inbox/read-all", { method: "POST" });
  for (const li of state.items.values()) setRead(li, true);
  setUnread(answer.unread);
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  switch (message.type) {
    case "subscribed":
      state.retry = 0;
      setStatus(`live as ${message.user_id}`);
      load().catch(() => {});  // catch up on anything that came while disconnected
      break;
    case "notification": {
      render({ ...message.item, read: false }, true);
      showList();
      setUnread(message.unread);
      break;
    }
    case "read": {
      const li = state.items.get(message.notification_id);
      if (li) setRead(li, true);
      setUnread(message.unread);
      break;
    }
    case "read_all":
      for (const li of state.items.values()) setRead(li, true);
      setUnread(message.unread);
      break;
    case "deleted":
      state.items.delete(message.notification_id);
      showList();
      setUnread(message.unread);
      break;
    case "ping":
      state.socket.send(JSON.stringify({ type: "pong" }));
      break;
  }
}

// The stream gateway: the page says where (HERALD_STREAM_PUBLIC_URL), or its port on this
// page's host (HERALD_STREAM_PORT).
function streamUrl() {
  const configured = document.querySelector('meta[name="herald-stream"]').content;
  if (/^wss?:\/\//.test(configured)) return configured;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.hostname}:${configured}/v1/me/stream`;
}

function connect() {
  // The token rides in the subprotocol list; Herald answers "herald.v1" and never echoes it.
  const socket = new WebSocket(streamUrl(), ["herald.v1", `bearer.${state.token}`]);
  state.socket = socket;
  socket.addEventListener("message", onMessage);
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    if (event.code === 4401 || event.code === 4403) {
      signOut(`stream refused (${event.code}): ${event.reason}`);
      return;
    }
    const wait = Math.min(30000, 500 * 2 ** state.retry++);
    setStatus(`disconnected (${event.code}); retrying in ${Math.round(wait / 1000)} s`);
    setTimeout(() => { if (state.socket === socket) connect(); }, wait);
  });
}

function start(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("connect").hidden = true;
  $("panel").hidden = false;
  setStatus("connecting…");
  connect();
}

function signOut(reason) {
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.items.clear();
  showList();
  setUnread(0);
  $("panel").hidden = true;
  $("connect").hidden = false;
  $("token").value = "";
  if (reason) $("token").placeholder = reason;
}

document.addEventListener("DOMContentLoaded", () => {
  $("connect").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) start(token);
  });
  $("read-all").addEventListener("click", () => markAllRead().catch(() => {}));
  $("sign-out").addEventListener("click", () => signOut());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) start(saved);
});
