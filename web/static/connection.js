// The chat page's connection: sending (paced below the server's rate limit), reconnecting with
// backoff, resuming rooms, keeping the nick, and the server's events that change more than one view.

import {
  PAGE, BACKOFF_FIRST_MS, BACKOFF_MAX_MS, NICK_RETRY_MS, PING, STORE_NICK, STORE_TOKEN, STORE_INVITE, $, state,
  roomKey, dmKey, sameNick, roomConvs, showError, clearErrors, setStatus, showNick, showNickForm
} from "./state.js";
import {
  onChat, onDm, onPresence, renderRoomList, onHistory, clearConv, renameDm, dropConv, renderMembers, addLine,
  scrollToBottom, updateOlder
} from "./view.js";
import {
  onTopic, onKickOrBan, onMute, onMode, onChatRefused, onJoinedRoom, onRejoinRefused, onModerationRefused,
  renderHeader, renderComposer, sentChat
} from "./moderation.js";
import { onTyping, onMark, onSearch, onTeamRefused, joinedMark, renderTyping } from "./team.js";

const MODERATION = new Set(["topic", "kick", "ban", "mute", "mode"]);
const TEAM = new Set(["edit", "delete", "react", "search"]); // refusals said in the room (team.js)

/** A token bucket a little under the server's, so a reconnect with many rooms is never refused. */
function makePacer(limits) {
  const burst = Math.max(1, (limits.rate_burst || 20) - 1);
  const rate = (limits.rate_per_second || 5) * 0.9;
  return { burst, rate, tokens: burst, last: performance.now() };
}

export function send(msg) {
  msg.id = state.nextId++;
  state.outbox.push(msg);
  pump();
  return msg.id;
}

function pump() {
  clearTimeout(state.pumpTimer);
  state.pumpTimer = null;
  const p = state.pacer;
  while (state.outbox.length && state.connected) {
    const now = performance.now();
    p.tokens = Math.min(p.burst, p.tokens + ((now - p.last) / 1000) * p.rate);
    p.last = now;
    if (p.tokens < 1) {
      state.pumpTimer = setTimeout(pump, ((1 - p.tokens) / p.rate) * 1000 + 5);
      return;
    }
    p.tokens -= 1;
    const msg = state.outbox.shift();
    state.inflight.set(msg.id, msg);
    state.ws.send(JSON.stringify(msg));
    if (msg.type === "chat") sentChat(msg.room);
  }
}

// Close codes after which the page does not reconnect by itself (PROTOCOL.md); "Reconnect now" does.
const FINAL_CLOSES = {
  4001: "Disconnected: your token expired. Open the page with a new one.",
  4002: "Disconnected: this connection was replaced by a newer one with your token (another tab or window?).",
};

/** The WebSocket address: this page's host, with this tab's identity token (or class invite) and
 *  the last resume token. */
function socketUrl() {
  const query = new URLSearchParams();
  const token = sessionStorage.getItem(STORE_TOKEN);
  const invite = sessionStorage.getItem(STORE_INVITE);
  if (token) query.set("token", token);
  else if (invite) query.set("invite", invite);
  if (state.resumeToken) query.set("resume", state.resumeToken);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const search = query.toString();
  return scheme + location.host + "/" + (search ? "?" + search : "");
}

export function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (state.ws) return;
  const ws = new WebSocket(socketUrl());
  let opened = false;
  state.ws = ws;
  ws.onopen = () => {
    opened = true;
    heard(ws);
  };
  ws.onmessage = (e) => {
    heard(ws);
    let event;
    try {
      event = JSON.parse(e.data);
    } catch {
      return;
    }
    handleEvent(event);
  };
  ws.onclose = (e) => lost(ws, opened ? e.code : null);
}

/** `ws` is gone (`code`: its close code; null if it never opened): sort out what was in flight, and
 *  reconnect unless the server said not to. */
function lost(ws, code) {
  if (state.ws !== ws) return;
  state.ws = null;
  clearTimeout(state.pingTimer);
  const wasConnected = state.connected;
  state.connected = false;
  if (wasConnected) disconnected();
  if (FINAL_CLOSES[code]) {
    state.resumeToken = null; // it was spent on the connection that replaced us
    setStatus(FINAL_CLOSES[code], true);
  } else if (code === null) {
    refusedOrUnreachable();
  } else {
    scheduleReconnect("Disconnected.");
  }
}

export const INVITE_REFUSED = "This invite link has expired or been used up; ask your teacher for a new one.";

/** The socket never opened: either the server is down, or it answered the handshake with an
 *  HTTP refusal (401 without a valid token or invite, 403), whose status a page cannot read. A
 *  plain HTTP request tells the two apart. A refused invite is not retried by itself (trying
 *  again cannot make it valid); "Reconnect now" does. */
function refusedOrUnreachable() {
  const retry = (why) => state.ws || state.retryTimer || scheduleReconnect(why); // unless "Reconnect now" was quicker
  const invited = !sessionStorage.getItem(STORE_TOKEN) && sessionStorage.getItem(STORE_INVITE);
  fetch("/healthz", { method: "HEAD", cache: "no-store" }).then(
    () => (invited ? state.ws || setStatus(INVITE_REFUSED, true)
      : retry("The server refused the connection (a token may be required).")),
    () => retry("Disconnected."));
}

/** A frame came on `ws`: it is alive. Ping it after PING.interval of silence; give it up if it
 *  then stays silent for PING.timeout more. */
function heard(ws) {
  clearTimeout(state.pingTimer);
  state.pingTimer = setTimeout(() => {
    if (state.ws !== ws) return;
    ws.send(JSON.stringify({ type: "ping" })); // no id: its pong needs no bookkeeping
    state.pingTimer = setTimeout(() => abandon(ws), PING.timeout);
  }, PING.interval);
}

/** Give up a connection that stopped answering (the server may still think it is open; the
 *  resume token takes our nick and rooms back from it). */
function abandon(ws) {
  if (state.ws !== ws) return;
  ws.onclose = ws.onmessage = null;
  ws.close();
  lost(ws, 1006);
}

/** The page is going away, or into the back/forward cache, where it would keep its socket open
 *  and stay in its rooms unseen: close with 1000 now (the rooms see it leave). If the page comes
 *  back from that cache, `pageshow` connects again. */
export function suspend() {
  const ws = state.ws;
  if (!ws) return;
  ws.onclose = ws.onmessage = null;
  ws.close(1000);
  state.resumeToken = null; // a clean close: the server forgets our client
  lost(ws, 1000);
}

/** Exponential backoff with jitter, so clients dropped together do not all return at once. */
function scheduleReconnect(why) {
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt) * (0.5 + Math.random() / 2);
  state.attempt += 1;
  setStatus(`${why} Reconnecting in ${Math.ceil(delay / 1000)} s…`, true);
  state.retryTimer = setTimeout(() => {
    setStatus(`${why} Reconnecting…`, true);
    connect();
  }, delay);
}

/** Sort what was queued or in flight: chats wait for the resume check, reads are dropped. */
function disconnected() {
  clearTimeout(state.nickRetryTimer);
  state.reclaiming = false;
  const pending = [...state.inflight.values(), ...state.outbox];
  state.inflight.clear();
  state.outbox = [];
  state.resuming.clear();
  for (const msg of pending) {
    if (msg.type === "chat" || msg.type === "dm") state.unconfirmed.push(msg);
    if (msg.type === "history") {
      const conv = state.convs.get(roomKey(msg.room));
      if (conv) conv.loadingOlder = false;
    }
  }
  for (const conv of roomConvs()) {
    if (conv.joined) addLine(conv, "notice", "Connection lost.");
    conv.joined = false;
    conv.typing = null;
  }
  renderTyping();
  renderComposer();
}

function onWelcome(event) {
  const reset = state.epoch !== null && event.epoch !== state.epoch;
  state.epoch = event.epoch;
  state.resumeToken = event.resume || null;
  state.me = event.nick;
  state.identity = event.auth || null;
  state.marks = event.marks || {}; // room -> the seq this identity has read up to (joined.mark says it too)
  if (event.auth) state.wantedNick = event.nick; // a token's nick: nick requests for another are forbidden
  state.connected = true;
  state.attempt = 0;
  state.limits = event.limits || {};
  state.pacer = makePacer(state.limits);
  clearErrors(); // a new connection: what was refused before is asked again or no longer applies
  setStatus("", false); // connected: nothing to say
  renderHeader();
  renderComposer();
  state.reclaiming = !!state.wantedNick && state.wantedNick !== state.me && state.wantedNick === state.grantedNick;
  if (state.wantedNick && state.wantedNick !== state.me) send({ type: "nick", nick: state.wantedNick });
  else showNick();
  for (const conv of roomConvs()) {
    if (reset) clearConv(conv, "The server started afresh; earlier messages are gone.");
    if (conv.closed) continue; // kicked or banned: rejoined only with its Rejoin button
    const join = { type: "join", room: conv.name };
    if (conv.lastSeq !== null) join.after = conv.lastSeq;
    state.resuming.add(conv.name);
    send(join); // after a `resumed` welcome we are in the room already: no presence, just what we missed
  }
  for (const room of event.resumed ? event.rooms || [] : []) {
    if (!state.convs.has(roomKey(room))) send({ type: "leave", room }); // left while the leave could not go out
  }
  releaseUnconfirmed();
  send({ type: "rooms" });
}

/** Once every room is back, resend the chats the server never stored, in their order. */
function releaseUnconfirmed() {
  if (state.resuming.size || state.reclaiming || !state.unconfirmed.length) return;
  const again = state.unconfirmed;
  state.unconfirmed = [];
  for (const msg of again) send({ ...msg });
}

// Every event type the server sends (schema/events.json) is in one of these two tables; a test
// (tests/browser/test_page_vocabulary.py) holds them to the schema. Write each key on its own line.
const HANDLERS = {
  welcome: onWelcome,
  joined: onJoined,
  left: () => send({ type: "rooms" }),
  chat: (event) => onChat(event, { live: true }),
  dm: onDm,
  presence: onPresence,
  nick: onNick,
  rooms: onRooms,
  history: onHistory,
  error: onError,
  auth: onAuth,
  topic: onTopic,
  kick: onKickOrBan,
  ban: onKickOrBan,
  mute: onMute,
  mode: onMode,
  edit: (event) => onChat(event, { live: true }),
  delete: (event) => onChat(event, { live: true }),
  react: (event) => onChat(event, { live: true }),
  typing: onTyping,
  mark: onMark,
  search: onSearch,
};

// Event types the page receives and deliberately does nothing more with, and why.
const IGNORED = {
  pong: "the answer to our ping: any frame already counts as a sign of life (heard())",
  who: "the page never sends `who`: the member list comes from `joined` and presence events",
};

function handleEvent(event) {
  const request = state.inflight.get(event.id);
  state.inflight.delete(event.id);
  const handler = HANDLERS[event.type];
  if (handler) handler(event, request);
  else if (!(event.type in IGNORED)) console.warn("roomchat: an event of unknown type", event.type);
}

/** The reply to `auth`: the connection's identity (and whether it is an operator) from now on.
 *  After an invited tab picks its nick, it carries `token`: this tab's identity token from now on
 *  (its reconnects and reloads present it instead of the invite, and use no invite). */
function onAuth(event) {
  state.identity = { nick: event.nick, op: event.op, exp: event.exp, rooms: event.rooms };
  if (typeof event.token === "string" && event.token) {
    sessionStorage.setItem(STORE_TOKEN, event.token);
    sessionStorage.removeItem(STORE_INVITE);
    state.wantedNick = event.nick;
  }
  renderHeader();
  renderMembers();
  renderComposer();
}

function onJoined(event) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv) return; // left again before the reply came
  const resumedFrom = conv.lastSeq;
  const wasClosed = !!conv.closed;
  conv.joined = true;
  onJoinedRoom(conv, event);
  if ($("join-error").dataset.cause === conv.name) showError("join", "");
  conv.members = event.members || [];
  const history = event.history || [];
  if (event.truncated && resumedFrom !== null) { // more was missed than one reply holds
    clearConv(conv, "Many messages came while you were away; showing the latest. Scroll up for older ones.");
    send({ type: "history", room: conv.name, limit: PAGE });
  } else {
    const asOf = Math.max(resumedFrom ?? 0, ...history.map((m) => m.seq)); // the reply's state is as of its newest
    for (const message of history) onChat(message, { live: resumedFrom !== null, asOf });
  }
  if (resumedFrom === null) {
    conv.atBeginning = history.length < PAGE && !event.truncated; // truncated: older ones did not fit
    if (conv.lastSeq === null) conv.lastSeq = 0;
    scrollToBottom(conv);
  } else {
    addLine(conv, "notice", wasClosed ? "You are back in the room." : "Reconnected.");
  }
  updateOlder(conv);
  joinedMark(conv, event, resumedFrom === null);
  if (state.resuming.delete(conv.name)) {
    dropStored(conv.name, history.filter((m) => m.seq > (resumedFrom ?? 0)));
    releaseUnconfirmed();
    if (!state.resuming.size && $("send-error").dataset.cause === "offline") showError("send", ""); // back now
  }
  if (conv.key === state.current) renderMembers();
  renderRoomList();
}

/** Forget unconfirmed chats to `room` that the resumed history shows were stored after all. */
function dropStored(room, resumed) {
  const stored = resumed.filter((m) => m.type === "chat" && m.from === state.me).map((m) => m.text);
  state.unconfirmed = state.unconfirmed.filter((msg) => {
    const at = msg.type === "chat" && msg.room === room ? stored.indexOf(msg.text) : -1;
    if (at >= 0) stored.splice(at, 1);
    return at < 0;
  });
}

function onNick(event, request) {
  if (request || sameNick(event.old, state.me)) {
    state.me = state.wantedNick = event.nick;
    state.storage.setItem(STORE_NICK, event.nick);
    showNick();
  }
  if (request) {
    state.grantedNick = event.nick;
    showError("nick", "");
    showNickForm(false);
    if (state.reclaiming) {
      state.reclaiming = false;
      clearTimeout(state.nickRetryTimer);
      if ($("send-error").dataset.cause === "reclaim") showError("send", "");
      setStatus("", false);
      releaseUnconfirmed();
    }
  }
  for (const conv of roomConvs()) {
    const at = conv.members.findIndex((m) => sameNick(m, event.old));
    if (at < 0) continue;
    conv.members[at] = event.nick;
    addLine(conv, "presence", `${event.old} is now known as ${event.nick}`);
  }
  const dm = state.convs.get(dmKey(event.old));
  if (dm && !sameNick(event.old, event.nick)) renameDm(dm, event.nick);
  renderMembers();
}

function onRooms(event) {
  state.roomList = event.rooms || [];
  renderRoomList();
}

function onError(event, request) {
  const kind = request && request.type;
  const message = event.message || event.code;
  if (kind === "nick" && state.reclaiming && event.code === "nick_taken") {
    setStatus(`Connected as ${state.me}; waiting for your nick ${state.wantedNick} (held by your previous connection)…`,
      false);
    clearTimeout(state.nickRetryTimer);
    state.nickRetryTimer = setTimeout(() => state.connected && send({ type: "nick", nick: state.wantedNick }),
      NICK_RETRY_MS);
    return;
  }
  if (kind === "nick") {
    state.reclaiming = false;
    state.wantedNick = state.grantedNick;
    if (state.grantedNick) state.storage.setItem(STORE_NICK, state.grantedNick);
    else state.storage.removeItem(STORE_NICK);
    // the field shows the nick we really have; the sentence says which was refused
    showError("nick", $("nick-form").hidden ? `${request.nick}: ${message} You are ${state.me}.` : message);
    showNick();
    releaseUnconfirmed();
  } else if (MODERATION.has(kind)) {
    onModerationRefused(request, message);
  } else if (TEAM.has(kind)) {
    onTeamRefused(request, message);
  } else if (kind === "typing" || kind === "mark") {
    // nothing to tell: the room is gone, or we are no longer in it
  } else if (kind === "join" && onRejoinRefused(request.room, message)) {
    // said next to the Rejoin button of the closed room
  } else if (kind === "join" && !state.resuming.has(request.room)) {
    dropConv(state.convs.get(roomKey(request.room)));
    showError("join", message, request.room);
  } else if (kind === "join") {
    state.resuming.delete(request.room); // a room we could not get back into: say so in it
    const conv = state.convs.get(roomKey(request.room));
    if (conv) addLine(conv, "notice", message);
    releaseUnconfirmed();
  } else if (kind === "history") {
    const conv = state.convs.get(roomKey(request.room));
    if (conv) {
      conv.loadingOlder = false;
      addLine(conv, "notice", message);
    }
  } else if (kind === "chat" || kind === "dm") {
    if (kind === "chat") onChatRefused(event, request);
    const conv = state.convs.get(kind === "chat" ? roomKey(request.room) : dmKey(request.to));
    if (conv && conv.key !== state.current) {
      addLine(conv, "notice", `Not sent: “${request.text}”: ${message}`); // said where it was meant to go
    } else {
      if (!$("message-input").value) $("message-input").value = request.text; // give it back, to fix and resend
      showError("send", message);
    }
  } else if (kind !== "rooms" && kind !== "who" && kind !== "leave") {
    showError("send", message);
  }
}
