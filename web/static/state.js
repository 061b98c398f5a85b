// The chat page's shared state, its rules for names, and the small helpers every part uses.
// Everything from the network is rendered with textContent (through el()), never as HTML.

import { NICK_RE, foldNick, sameNick } from "./nick.js";

export { NICK_RE, foldNick, sameNick };
export const ROOM_RE = /^[A-Za-z0-9_.\-#]{1,64}$/;
export const PAGE = 50; // messages per history page, as many as a plain join replays
export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 15000;
export const ROOMS_REFRESH_MS = 30000;
export const NEAR_BOTTOM_PX = 60;
export const NICK_RETRY_MS = 2000;
export const STORE_NICK = "roomchat.nick";
export const STORE_ROOMS = "roomchat.rooms";
export const STORE_TOKEN = "roomchat.token"; // sessionStorage only: this tab's identity token
export const STORE_INVITE = "roomchat.invite"; // sessionStorage only: the class invite this tab came with

// A connection can die without a word (a network that drops packets sends no FIN, and a browser
// notices only when TCP gives up, minutes later). So after PING.interval ms without a frame from
// the server we send a `ping`, and a connection that stays silent PING.timeout ms more is given
// up and replaced: a silent drop is found within interval + timeout (15 + 5 s). `?ping=2,1` on
// the page's address sets both, in seconds (the tests use it).
export const PING = pingSettings(new URLSearchParams(location.search).get("ping"));

function pingSettings(given) {
  const [interval, timeout] = (given || "").split(",").map(Number);
  const ok = (value) => Number.isFinite(value) && value > 0;
  return { interval: ok(interval) ? interval * 1000 : 15000, timeout: ok(timeout) ? timeout * 1000 : 5000 };
}
export const $ = (id) => document.getElementById(id);

export const state = {
  ws: null,
  connected: false,
  // Where the nick and rooms are remembered: localStorage (every tab of this browser), or this
  // tab's sessionStorage when the tab has an identity of its own (a `?nick=` link, a token).
  storage: localStorage,
  resumeToken: null, // from the last `welcome`: `?resume=` on the next connection
  pingTimer: null,
  epoch: null,
  me: null, // the nick the server knows us by
  identity: null, // what our token says (welcome.auth, or an `auth` reply): {nick, op, exp, rooms?}
  marks: {}, // welcome.marks: room -> the seq this identity had read up to, on any device
  wantedNick: null, // the nick we ask for after every (re)connect
  grantedNick: null, // the last nick the server gave us at our request
  reclaiming: false, // asking back the nick our previous connection still holds
  nickRetryTimer: null,
  limits: {},
  convs: new Map(), // key -> conversation (a room pane or a direct-message pane)
  current: null, // key of the conversation in view
  roomList: [], // the last `rooms` reply: [{room, members}]
  nextId: 1,
  outbox: [], // requests waiting for the pacer
  inflight: new Map(), // id -> request sent, reply not seen yet
  resuming: new Set(), // rooms whose `joined` we wait for after a (re)connect
  unconfirmed: [], // chats in flight when the connection dropped
  pacer: null,
  pumpTimer: null,
  attempt: 0,
  retryTimer: null,
};

/** Build an element; children may be strings, which become text nodes (never HTML). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

export function clockTime(ts) {
  const date = ts ? new Date(ts * 1000) : new Date();
  return el("time", { datetime: date.toISOString(), title: date.toLocaleString() },
    date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
}

export const roomKey = (name) => "room:" + name;
export const dmKey = (nick) => "dm:" + foldNick(nick);
export const roomConvs = () => [...state.convs.values()].filter((c) => c.kind === "room");

export function saveRooms() {
  state.storage.setItem(STORE_ROOMS, JSON.stringify(roomConvs().map((c) => c.name)));
}

/** Show (or with "" clear) the error next to what caused it: "nick", "join" or "send". */
export function showError(where, text, cause = "") {
  const box = $(where + "-error");
  box.textContent = text;
  box.dataset.cause = text ? cause : "";
}

export function clearErrors() {
  for (const where of ["nick", "join", "send"]) showError(where, "");
}

/** The connection's status, shown only when it matters: `text` "" hides it (connected, nothing to
 *  say). `#status[data-online]` says whether the page is connected, for tests and styles. */
export function setStatus(text, offline) {
  $("status-text").textContent = text;
  $("status").hidden = !text;
  $("status").classList.toggle("offline", offline);
  $("status").dataset.online = state.connected ? "1" : "";
  $("reconnect-now").hidden = !offline;
}

/** The nick we really have (or, before the first welcome, the one we will ask for), in the header;
 *  the nick field, while it is closed, holds the same. */
export function showNick() {
  const nick = state.me || state.wantedNick || "";
  $("my-nick").textContent = nick || "…";
  if ($("nick-form").hidden) $("nick-input").value = nick;
}

/** Open (or close) the nick form; closed, the header just says the nick we have. */
export function showNickForm(open) {
  $("nick-form").hidden = !open;
  $("nick-button").setAttribute("aria-expanded", String(open));
  if (open) {
    $("nick-input").value = state.me || state.wantedNick || "";
    $("nick-input").focus();
    $("nick-input").select();
  } else {
    showNick();
  }
}

/** Whether our token makes us an operator in `room` (the `op` claim; with `rooms`, in those only). */
export function isOp(room) {
  const id = state.identity;
  return !!id && id.op === true && (!Array.isArray(id.rooms) || id.rooms.includes(room));
}

/** "45 s", "10 min", "2 h", "3 days": a duration in seconds, rounded up to its largest unit. */
export function duration(seconds) {
  const units = [[86400, "day", "days"], [3600, "h", "h"], [60, "min", "min"]];
  for (const [size, one, many] of units) {
    if (seconds >= size) {
      const count = Math.ceil(seconds / size - 1e-9);
      return `${count} ${count === 1 ? one : many}`;
    }
  }
  return `${Math.max(0, Math.ceil(seconds))} s`;
}
