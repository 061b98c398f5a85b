// roomchat's chat page: plain JavaScript on protocol v1, no framework, no build step.
//
// Everything from the network is rendered with textContent (through el()), never as HTML.
// Room messages are kept in seq order per room and each seq is shown once, whatever order
// live events, history pages and resumed events arrive in.
//
// Reconnect rule (the terminal client follows the same one): when the connection drops we
// retry with backoff and jitter; the new `welcome` is answered with our nick and, for every
// room, a `join` with `after` = the last seq shown. Chats sent but not confirmed before the drop
// are sent again once every room is back, unless the resumed history shows they were stored.
// If the new `welcome` has another epoch, old seqs mean nothing: rooms are reloaded. A drop
// with no FIN is found by our own ping (state.js: PING, 15 + 5 s).
//
// Identity rule (the terminal client follows it too): a reconnect presents the last `welcome`'s
// resume token (`?resume=`). If the server still holds our old connection, it hands us our
// client back (`resumed`): same nick, same rooms, no nick request and no leave/join for the
// rooms. If it does not know the token and our nick is still held (the server notices a vanished
// connection only with its next ping), we ask for it again every NICK_RETRY_MS until it is free,
// and nothing is sent as the guest meanwhile. `?token=` and `?nick=` give a tab its own identity
// (tabIdentity below).
//
// Errors show next to what caused them (the nick field, the room field, the message box) and go
// away once resolved, when that field is edited, when the conversation changes or on reconnect.
// No inline script or style anywhere (the page is served with a same-origin-only CSP).
//
// Modules: nick.js (the nick rule and nick equality, the server's), state.js (shared state, name
// rules, helpers), connection.js (sending, reconnecting, resuming, the nick, the table of events),
// view.js (conversations, tabs, members, history, message rows), moderation.js (what operators did,
// the room's header, the message box's limits, the operators' controls), team.js (edit, delete,
// reactions, typing, read marks and unread counts, mentions and notifications, search, stored
// direct messages) and this file (the forms and start-up).

import {
  NICK_RE, ROOM_RE, ROOMS_REFRESH_MS, STORE_NICK, STORE_ROOMS, STORE_TOKEN, STORE_INVITE, $, state, roomKey,
  showError, showNick, showNickForm
} from "./state.js";
import { send, connect, suspend } from "./connection.js";
import { openRoom, show, setDrawer } from "./view.js";
import { chatBlocked, startModeration } from "./moderation.js";
import { startTeam, typed, renderNotifyButton } from "./team.js";

/** Why `text` cannot be sent as it is, or "". Counted in code points, as the server counts. */
function textProblem(text) {
  const limit = state.limits.max_text_chars;
  const length = [...text].length;
  return limit && length > limit ? `Text is ${length} characters; the limit is ${limit}.` : "";
}

function onSend(e) {
  e.preventDefault();
  const input = $("message-input");
  const text = input.value.trim(); // the lines inside stay as typed
  if (!text) return;
  const conv = state.convs.get(state.current);
  if (!conv) return showError("send", "Join a room first.");
  if (!state.connected) {
    return showError("send", "Not connected: your message is still in the box and can be sent once we reconnect.",
      "offline");
  }
  if (state.reclaiming) {
    return showError("send", `Waiting for your nick ${state.wantedNick} to be free again; your message is still in `
      + "the box.", "reclaim");
  }
  if (state.resuming.size) {
    return showError("send", "Rejoining your rooms after the reconnect; your message is still in the box.", "offline");
  }
  const problem = textProblem(text) || chatBlocked();
  if (problem) return showError("send", problem);
  showError("send", "");
  send(conv.kind === "room" ? { type: "chat", room: conv.name, text } : { type: "dm", to: conv.name, text });
  conv.typingSentAt = 0; // typing again after this is news
  input.value = "";
  fitMessageBox();
}

function onNickSubmit(e) {
  e.preventDefault();
  const nick = $("nick-input").value.trim();
  if (!NICK_RE.test(nick)) return showError("nick", "A nick is 1-32 letters, digits, '_', '-' or '.'.");
  showError("nick", "");
  clearTimeout(state.nickRetryTimer); // a nick of one's own choice ends any wait for the held one
  state.reclaiming = false;
  state.wantedNick = nick;
  state.storage.setItem(STORE_NICK, nick);
  if (state.connected && nick !== state.me) send({ type: "nick", nick }); // the form closes once it is ours
  else showNickForm(false);
}

function showJoinForm(open) {
  $("join-form").hidden = !open;
  $("join-button").setAttribute("aria-expanded", String(open));
  if (open) $("join-input").focus();
}

/** Enter sends; Shift+Enter (or Enter while an input method composes) is a new line. The box
 *  grows with its lines, up to a few. */
function onMessageKey(e) {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("send-form").requestSubmit();
  }
}

function fitMessageBox() {
  const box = $("message-input");
  box.rows = Math.min(8, Math.max(1, box.value.split("\n").length));
}

/** Rooms named in the address (`#lobby`, or `#lobby,help`); a part that is not a valid
 *  percent-encoding (`#lobby%`, `#caf%C3`) or not a room name is ignored. */
function roomsFromHash() {
  const decode = (part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return "";
    }
  };
  return location.hash.slice(1).split(",").map(decode).filter((r) => ROOM_RE.test(r));
}

/** Who this tab is. `?token=` moves out of the address (so it is not bookmarked or shared by
 *  accident) into this tab's sessionStorage, for its reconnects and reloads. A tab with a token, or
 *  opened from a `?nick=X#r1,r2` link, has an identity of its own: its nick and rooms are kept in
 *  sessionStorage, and those the browser remembers for its other tabs (localStorage) stay as they were. */
function tabIdentity() {
  const params = new URLSearchParams(location.search);
  const invite = params.get("invite");
  if (invite) sessionStorage.setItem(STORE_INVITE, invite); // the link stays as it is: it is the class's
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(STORE_TOKEN, token);
    params.delete("token");
    const search = params.toString();
    history.replaceState(null, "", location.pathname + (search ? "?" + search : "") + location.hash);
  }
  const linked = params.get("nick");
  const fromLink = !!linked && NICK_RE.test(linked);
  if (fromLink || sessionStorage.getItem(STORE_TOKEN) || sessionStorage.getItem(STORE_INVITE)) {
    state.storage = sessionStorage;
    $("nick-label").textContent = "Nick (this tab)";
    $("nick-scope").hidden = false;
    $("nick-button").title = "This tab has a nick of its own (from its link, token or invite); other tabs keep "
      + "the one this browser remembers. Click to change it.";
  }
  if (fromLink) sessionStorage.setItem(STORE_NICK, linked);
}

function start() {
  tabIdentity();
  state.wantedNick = state.storage.getItem(STORE_NICK);
  showNick();
  let saved = [];
  try {
    saved = JSON.parse(state.storage.getItem(STORE_ROOMS) || "[]");
  } catch {
    saved = [];
  }
  const fromHash = roomsFromHash();
  const rooms = [...new Set([...fromHash, ...saved])].filter((r) => ROOM_RE.test(r));
  for (const room of rooms.length ? rooms : ["lobby"]) openRoom(room, false);
  if (fromHash.length && state.convs.has(roomKey(fromHash[0]))) show(roomKey(fromHash[0]), false);

  $("skip-link").addEventListener("click", (e) => {
    e.preventDefault(); // the address's #fragment names rooms, so this link must not change it
    $("message-input").focus();
  });
  $("send-form").addEventListener("submit", onSend);
  $("message-input").addEventListener("keydown", onMessageKey);
  $("message-input").addEventListener("input", () => {
    fitMessageBox();
    showError("send", textProblem($("message-input").value.trim()));
    typed($("message-input").value.trim());
  });
  $("nick-input").addEventListener("input", () => showError("nick", ""));
  $("join-input").addEventListener("input", () => showError("join", ""));
  $("nick-form").addEventListener("submit", onNickSubmit);
  $("nick-button").addEventListener("click", () => showNickForm($("nick-form").hidden));
  $("nick-cancel").addEventListener("click", () => {
    showError("nick", "");
    showNickForm(false);
  });
  $("nick-form").addEventListener("keydown", (e) => e.key === "Escape" && showNickForm(false));
  $("join-button").addEventListener("click", () => showJoinForm($("join-form").hidden));
  $("join-form").addEventListener("keydown", (e) => e.key === "Escape" && showJoinForm(false));
  startModeration();
  startTeam();
  $("drawer-toggle").addEventListener("click", () => setDrawer(!$("layout").classList.contains("drawer-open")));
  document.addEventListener("keydown", (e) => e.key === "Escape" && setDrawer(false));
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (openRoom($("join-input").value.trim(), true)) { // else it stays, to fix
      $("join-input").value = "";
      showJoinForm(false);
    }
  });
  $("refresh-rooms").addEventListener("click", () => state.connected && send({ type: "rooms" }));
  $("reconnect-now").addEventListener("click", connect);
  window.addEventListener("online", connect);
  window.addEventListener("pagehide", suspend);
  window.addEventListener("pageshow", (e) => e.persisted && connect());
  window.addEventListener("hashchange", () => roomsFromHash().forEach((r) => openRoom(r, true)));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.current) show(state.current, false);
    renderNotifyButton(); // the permission may have changed in the browser's settings meanwhile
  });
  setInterval(() => state.connected && !document.hidden && send({ type: "rooms" }), ROOMS_REFRESH_MS);
  if (sessionStorage.getItem(STORE_INVITE) && !state.wantedNick && !sessionStorage.getItem(STORE_TOKEN)) {
    showNickForm(true); // an invited student's first visit: pick the nick the invite keeps for you
    $("nick-label").textContent = "Pick your nick";
  }
  connect();
}

start();
