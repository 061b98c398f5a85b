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
// If the new `welcome` has another epoch, old seqs mean nothing: rooms are reloaded.

const NICK_RE = /^[A-Za-z0-9_.\-]{1,32}$/;
const ROOM_RE = /^[A-Za-z0-9_.\-#]{1,64}$/;
const PAGE = 50; // messages per history page, as many as a plain join replays
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
const ROOMS_REFRESH_MS = 30000;
const NEAR_BOTTOM_PX = 60;
const STORE_NICK = "roomchat.nick";
const STORE_ROOMS = "roomchat.rooms";

const $ = (id) => document.getElementById(id);

const state = {
  ws: null,
  connected: false,
  epoch: null,
  me: null, // the nick the server knows us by
  wantedNick: null, // the nick we ask for after every (re)connect
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

// -- small helpers ---------------------------------------------------------------------------

/** Build an element; children may be strings, which become text nodes (never HTML). */
function el(tag, props = {}, ...children) {
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

function clockTime(ts) {
  const date = ts ? new Date(ts * 1000) : new Date();
  return el("time", { datetime: date.toISOString(), title: date.toLocaleString() },
    date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
}

const roomKey = (name) => "room:" + name;
const dmKey = (nick) => "dm:" + nick.toLowerCase();
const sameNick = (a, b) => a.toLowerCase() === b.toLowerCase();
const roomConvs = () => [...state.convs.values()].filter((c) => c.kind === "room");

function saveRooms() {
  localStorage.setItem(STORE_ROOMS, JSON.stringify(roomConvs().map((c) => c.name)));
}

function showError(text) {
  $("send-error").textContent = text;
}

function setStatus(text, offline) {
  $("status-text").textContent = text;
  $("status").classList.toggle("offline", offline);
  $("reconnect-now").hidden = !offline;
}

// -- sending, paced below the server's rate limit ---------------------------------------------

/** A token bucket a little under the server's, so a reconnect with many rooms is never refused. */
function makePacer(limits) {
  const burst = Math.max(1, (limits.rate_burst || 20) - 1);
  const rate = (limits.rate_per_second || 5) * 0.9;
  return { burst, rate, tokens: burst, last: performance.now() };
}

function send(msg) {
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
  }
}

// -- connection life cycle ----------------------------------------------------------------------

function connect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (state.ws) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/");
  state.ws = ws;
  ws.onmessage = (e) => {
    let event;
    try {
      event = JSON.parse(e.data);
    } catch {
      return;
    }
    handleEvent(event);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    const wasConnected = state.connected;
    state.connected = false;
    if (wasConnected) disconnected();
    scheduleReconnect();
  };
}

/** Exponential backoff with jitter, so clients dropped together do not all return at once. */
function scheduleReconnect() {
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt) * (0.5 + Math.random() / 2);
  state.attempt += 1;
  setStatus(`Disconnected. Reconnecting in ${Math.ceil(delay / 1000)} s…`, true);
  state.retryTimer = setTimeout(() => {
    setStatus("Reconnecting…", true);
    connect();
  }, delay);
}

/** Sort what was queued or in flight: chats wait for the resume check, reads are dropped. */
function disconnected() {
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
  }
}

function onWelcome(event) {
  const reset = state.epoch !== null && event.epoch !== state.epoch;
  state.epoch = event.epoch;
  state.me = event.nick;
  state.connected = true;
  state.attempt = 0;
  state.pacer = makePacer(event.limits || {});
  const limit = event.limits && event.limits.max_text_chars;
  if (limit) $("message-input").maxLength = limit;
  setStatus("Connected.", false);
  if (state.wantedNick && state.wantedNick !== state.me) send({ type: "nick", nick: state.wantedNick });
  else showNick();
  for (const conv of roomConvs()) {
    if (reset) clearConv(conv, "The server started afresh; earlier messages are gone.");
    const join = { type: "join", room: conv.name };
    if (conv.lastSeq !== null) join.after = conv.lastSeq;
    state.resuming.add(conv.name);
    send(join);
  }
  releaseUnconfirmed();
  send({ type: "rooms" });
}

/** Once every room is back, resend the chats the server never stored, in their order. */
function releaseUnconfirmed() {
  if (state.resuming.size || !state.unconfirmed.length) return;
  const again = state.unconfirmed;
  state.unconfirmed = [];
  for (const msg of again) send({ ...msg });
}

// -- events from the server --------------------------------------------------------------------

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
};

function handleEvent(event) {
  const request = state.inflight.get(event.id);
  state.inflight.delete(event.id);
  const handler = HANDLERS[event.type];
  if (handler) handler(event, request);
}

function onJoined(event) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv) return; // left again before the reply came
  const resumedFrom = conv.lastSeq;
  conv.joined = true;
  conv.members = event.members || [];
  const history = event.history || [];
  if (event.truncated && resumedFrom !== null) { // more was missed than one reply holds
    clearConv(conv, "Many messages came while you were away; showing the latest. Scroll up for older ones.");
    send({ type: "history", room: conv.name, limit: PAGE });
  } else {
    for (const message of history) onChat(message, { live: resumedFrom !== null });
  }
  if (resumedFrom === null) {
    conv.atBeginning = history.length < PAGE && !event.truncated; // truncated: older ones did not fit
    if (conv.lastSeq === null) conv.lastSeq = 0;
    scrollToBottom(conv);
  } else {
    addLine(conv, "notice", "Reconnected.");
  }
  updateOlder(conv);
  if (state.resuming.delete(conv.name)) {
    dropStored(conv.name, history.filter((m) => m.seq > (resumedFrom ?? 0)));
    releaseUnconfirmed();
  }
  if (conv.key === state.current) renderMembers();
  renderRoomList();
}

/** Forget unconfirmed chats to `room` that the resumed history shows were stored after all. */
function dropStored(room, resumed) {
  const stored = resumed.filter((m) => m.from === state.me).map((m) => m.text);
  state.unconfirmed = state.unconfirmed.filter((msg) => {
    const at = msg.type === "chat" && msg.room === room ? stored.indexOf(msg.text) : -1;
    if (at >= 0) stored.splice(at, 1);
    return at < 0;
  });
}

/** Show a chat event in its room, in seq order, once. `live` ones may count as unread. */
function onChat(event, { live }) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv || conv.seqs.has(event.seq)) return;
  const item = messageItem(event);
  item.dataset.seq = event.seq;
  conv.seqs.add(event.seq);
  const stick = isNearBottom(conv);
  if (conv.oldestSeq !== null && event.seq < conv.oldestSeq) {
    conv.log.prepend(item);
  } else {
    // Walk back over messages with a higher seq; anything else (a presence line) stays before it.
    let after = conv.log.lastElementChild;
    while (after && after.dataset.seq && Number(after.dataset.seq) > event.seq) after = after.previousElementSibling;
    if (after) after.after(item);
    else conv.log.prepend(item);
  }
  conv.oldestSeq = conv.oldestSeq === null ? event.seq : Math.min(conv.oldestSeq, event.seq);
  conv.lastSeq = Math.max(conv.lastSeq ?? 0, event.seq);
  if (live) arrived(conv, event.from, stick);
}

function onDm(event) {
  const mine = sameNick(event.from, state.me);
  const conv = openDm(mine ? event.to : event.from, false);
  const stick = isNearBottom(conv);
  conv.log.append(messageItem(event));
  if (!mine) arrived(conv, event.from, stick);
  else scrollToBottom(conv);
}

function messageItem(event) {
  const mine = sameNick(event.from, state.me || "");
  return el("li", { class: mine ? "msg mine" : "msg" },
    clockTime(event.ts), " ", el("span", { class: "from", text: event.from }), " ",
    el("span", { class: "text", text: event.text }));
}

/** A new message landed in `conv`: keep the view at the bottom, or count it as unread. */
function arrived(conv, from, stick) {
  const inView = conv.key === state.current && !document.hidden;
  if (stick && conv.key === state.current) scrollToBottom(conv);
  if (!inView && !sameNick(from, state.me || "")) {
    conv.unread += 1;
    renderTab(conv);
  }
}

function onPresence(event) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv) return;
  if (event.event === "join") {
    if (!conv.members.some((m) => sameNick(m, event.nick))) conv.members.push(event.nick);
    addLine(conv, "presence", `${event.nick} joined`);
  } else {
    conv.members = conv.members.filter((m) => !sameNick(m, event.nick));
    addLine(conv, "presence", `${event.nick} left`);
  }
  if (conv.key === state.current) renderMembers();
  renderRoomList();
}

function onNick(event, request) {
  if (request || sameNick(event.old, state.me)) {
    state.me = state.wantedNick = event.nick;
    localStorage.setItem(STORE_NICK, event.nick);
    showNick();
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

/** All rooms with member counts; for rooms we are in, the count follows presence events live. */
function renderRoomList() {
  const counts = new Map(state.roomList.map((r) => [r.room, r.members]));
  for (const conv of roomConvs()) if (conv.joined) counts.set(conv.name, conv.members.length);
  const names = [...counts.keys()].sort();
  const list = $("all-rooms");
  replaceItems(list, names.map((name) => el("li", {},
    el("button", { type: "button", class: "link", onclick: () => openRoom(name, true) }, name),
    el("span", { class: "count", text: `${counts.get(name)} ${counts.get(name) === 1 ? "member" : "members"}` }))));
  if (!names.length) list.append(el("li", { class: "hint", text: "No rooms yet." }));
}

/** An older page of a room's history (or the latest page after a truncated resume). */
function onHistory(event) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv) return;
  const pane = conv.pane;
  const fromBottom = pane.scrollHeight - pane.scrollTop;
  const messages = event.messages || [];
  // Older than anything shown: prepend newest first. The rest (a reload after a truncated
  // resume) is placed oldest first after what is there.
  const isOlder = (m) => conv.oldestSeq !== null && m.seq < conv.oldestSeq;
  const ordered = [...messages.filter(isOlder).reverse(), ...messages.filter((m) => !isOlder(m))];
  for (const message of ordered) onChat(message, { live: false });
  if (messages.length < PAGE && !event.truncated) conv.atBeginning = true; // a short page cut to size is not the end
  conv.loadingOlder = false;
  updateOlder(conv);
  pane.scrollTop = pane.scrollHeight - fromBottom; // keep what the reader was looking at in place
}

function onError(event, request) {
  const kind = request && request.type;
  if (kind === "nick") {
    state.wantedNick = state.me;
    showNick();
  } else if (kind === "join" && !state.resuming.has(request.room)) {
    dropConv(state.convs.get(roomKey(request.room)));
  } else if (kind === "join") {
    state.resuming.delete(request.room); // a room we could not get back into
    releaseUnconfirmed();
  } else if (kind === "history") {
    const conv = state.convs.get(roomKey(request.room));
    if (conv) conv.loadingOlder = false;
  } else if ((kind === "chat" || kind === "dm") && !$("message-input").value) {
    $("message-input").value = request.text; // give the text back, so it can be fixed and resent
  }
  showError(event.message || event.code);
}

// -- conversations -------------------------------------------------------------------------------

function makeConv(kind, name) {
  const key = kind === "room" ? roomKey(name) : dmKey(name);
  const log = el("ol", { class: "log", role: "log" }); // a live region: new messages are announced
  const older = el("button", { type: "button", class: "older", onclick: () => loadOlder(conv) }, "Load older messages");
  const pane = el("section", { class: "pane", hidden: "", tabindex: "0", "aria-label": paneLabel(kind, name) },
    older, log);
  const conv = {
    key, kind, name, pane, log, older,
    tab: null, tabOpen: null, tabClose: null, unread: 0, members: [], joined: false,
    seqs: new Set(), lastSeq: null, oldestSeq: null, atBeginning: kind === "dm", loadingOlder: false,
  };
  pane.addEventListener("scroll", () => {
    if (pane.scrollTop < NEAR_BOTTOM_PX) loadOlder(conv);
  });
  $("panes").append(pane);
  state.convs.set(key, conv);
  renderTab(conv);
  updateOlder(conv);
  return conv;
}

function clearConv(conv, note) {
  conv.log.replaceChildren();
  conv.seqs.clear();
  conv.lastSeq = conv.oldestSeq = null;
  conv.atBeginning = conv.loadingOlder = false;
  addLine(conv, "notice", note);
}

/** Join a room (or just show it, when we are in it already). */
function openRoom(name, focus) {
  if (!ROOM_RE.test(name)) {
    showError(`"${name}" is not a room name: use 1-64 letters, digits, '_', '-', '.' or '#'.`);
    return;
  }
  let conv = state.convs.get(roomKey(name));
  if (!conv) {
    conv = makeConv("room", name);
    saveRooms();
    if (state.connected) send({ type: "join", room: name });
  }
  show(conv.key, focus);
}

function openDm(nick, focus) {
  const conv = state.convs.get(dmKey(nick)) || makeConv("dm", nick);
  if (focus) show(conv.key, true);
  return conv;
}

const paneLabel = (kind, name) => (kind === "room" ? `Messages in ${name}` : `Direct messages with ${name}`);

function renameDm(conv, nick) {
  state.convs.delete(conv.key);
  conv.key = dmKey(nick);
  conv.name = nick;
  conv.pane.setAttribute("aria-label", paneLabel("dm", nick));
  state.convs.set(conv.key, conv);
  renderTab(conv);
  if (state.current !== null && !state.convs.has(state.current)) show(conv.key, false);
}

function leave(conv) {
  if (conv.kind === "room" && state.connected) send({ type: "leave", room: conv.name });
  dropConv(conv);
}

function dropConv(conv) {
  if (!conv) return;
  state.convs.delete(conv.key);
  conv.pane.remove();
  conv.tab.remove();
  if (!$("my-dms").querySelector(".tab")) $("my-dms").querySelector(".hint").hidden = false;
  saveRooms();
  if (state.current === conv.key) {
    const next = [...state.convs.keys()].pop();
    show(next ?? null, false);
  }
}

/** Put a conversation in view: its pane, title, members, the page address, and clear its unread. */
function show(key, focus) {
  state.current = key;
  const conv = key === null ? null : state.convs.get(key);
  for (const c of state.convs.values()) {
    c.pane.hidden = c !== conv;
    renderTab(c);
  }
  $("empty-pane").hidden = !!conv;
  $("conv-title").textContent = !conv ? "No conversation" : conv.kind === "room" ? conv.name : paneLabel("dm", conv.name);
  $("message-input").placeholder = conv ? `Message ${conv.kind === "room" ? conv.name : conv.name + " (direct)"}` : "Message";
  if (conv) {
    conv.unread = 0;
    renderTab(conv);
    scrollToBottom(conv);
    if (conv.kind === "room") history.replaceState(null, "", "#" + conv.name);
  }
  renderMembers();
  updateTitle();
  if (focus) $("message-input").focus();
}

/** Create or update a conversation's tab in place, so keyboard focus on it survives updates. */
function renderTab(conv) {
  if (!conv.tab) {
    conv.tabOpen = el("button", { type: "button", class: "tab-open", onclick: () => show(conv.key, true) });
    conv.tabClose = el("button", { type: "button", class: "tab-close", onclick: () => leave(conv) }, "×");
    conv.tab = el("li", { class: "tab" }, conv.tabOpen, conv.tabClose);
    const list = conv.kind === "room" ? $("my-rooms") : $("my-dms");
    list.append(conv.tab);
    if (conv.kind === "dm") list.querySelector(".hint").hidden = true;
  }
  conv.tabOpen.replaceChildren(conv.kind === "room" ? conv.name : "@" + conv.name);
  if (conv.unread) {
    conv.tabOpen.append(" ", el("span", { class: "badge" }, String(conv.unread),
      el("span", { class: "visually-hidden", text: " unread" })));
  }
  if (conv.key === state.current) conv.tabOpen.setAttribute("aria-current", "true");
  else conv.tabOpen.removeAttribute("aria-current");
  const closeLabel = conv.kind === "room" ? `Leave ${conv.name}` : `Close messages with ${conv.name}`;
  conv.tabClose.setAttribute("aria-label", closeLabel);
  conv.tabClose.title = closeLabel;
  updateTitle();
}

/** Replace a list's items, keeping keyboard focus on the button with the same label. */
function replaceItems(list, items) {
  const focused = list.contains(document.activeElement) ? document.activeElement.textContent : null;
  list.replaceChildren(...items);
  if (focused !== null) [...list.querySelectorAll("button")].find((b) => b.textContent === focused)?.focus();
}

function renderMembers() {
  const conv = state.convs.get(state.current);
  const list = $("member-list");
  if (!conv || conv.kind !== "room") {
    $("members-title").textContent = "Members";
    list.replaceChildren();
    return;
  }
  $("members-title").textContent = `Members of ${conv.name} (${conv.members.length})`;
  const sorted = [...conv.members].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  replaceItems(list, sorted.map((nick) => sameNick(nick, state.me || "")
    ? el("li", { class: "me" }, nick, " (you)")
    : el("li", {}, el("button", { type: "button", class: "link", title: `Send ${nick} a direct message`,
      onclick: () => openDm(nick, true) }, nick))));
}

function updateTitle() {
  const unread = [...state.convs.values()].reduce((sum, c) => sum + c.unread, 0);
  document.title = unread ? `(${unread}) roomchat` : "roomchat";
}

function addLine(conv, kind, text) {
  const stick = isNearBottom(conv);
  conv.log.append(el("li", { class: kind }, clockTime(), " ", el("span", { class: "text", text })));
  if (stick && conv.key === state.current) scrollToBottom(conv);
}

function isNearBottom(conv) {
  const pane = conv.pane;
  return pane.scrollHeight - pane.scrollTop - pane.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom(conv) {
  conv.pane.scrollTop = conv.pane.scrollHeight;
}

// -- older history ---------------------------------------------------------------------------

function loadOlder(conv) {
  if (conv.kind !== "room" || !conv.joined || conv.loadingOlder || conv.atBeginning) return;
  if (conv.oldestSeq === null || conv.oldestSeq <= 1) {
    conv.atBeginning = true;
    updateOlder(conv);
    return;
  }
  conv.loadingOlder = true;
  send({ type: "history", room: conv.name, before: conv.oldestSeq, limit: PAGE });
}

function updateOlder(conv) {
  conv.older.hidden = conv.atBeginning;
  conv.pane.classList.toggle("at-beginning", conv.atBeginning && conv.kind === "room");
}

// -- the forms ---------------------------------------------------------------------------------

function onSend(e) {
  e.preventDefault();
  const input = $("message-input");
  const text = input.value.trim();
  if (!text) return;
  const conv = state.convs.get(state.current);
  if (!conv) return showError("Join a room first.");
  if (!state.connected || state.resuming.size) {
    return showError("Not connected: your message is still in the box and can be sent once we reconnect.");
  }
  showError("");
  send(conv.kind === "room" ? { type: "chat", room: conv.name, text } : { type: "dm", to: conv.name, text });
  input.value = "";
}

function onNickSubmit(e) {
  e.preventDefault();
  const nick = $("nick-input").value.trim();
  if (!NICK_RE.test(nick)) return showError("A nick is 1-32 letters, digits, '_', '-' or '.'.");
  state.wantedNick = nick;
  localStorage.setItem(STORE_NICK, nick);
  if (state.connected && nick !== state.me) send({ type: "nick", nick });
}

function showNick() {
  $("nick-input").value = state.me || state.wantedNick || "";
}

/** Rooms named in the address (`#lobby`, or `#lobby,help`), else the rooms from last time, else lobby. */
function roomsFromHash() {
  const hash = decodeURIComponent(location.hash.slice(1));
  return hash ? hash.split(",").filter((r) => r) : [];
}

function start() {
  const params = new URLSearchParams(location.search);
  const linked = params.get("nick");
  if (linked && NICK_RE.test(linked)) localStorage.setItem(STORE_NICK, linked);
  state.wantedNick = localStorage.getItem(STORE_NICK);
  showNick();
  let saved = [];
  try {
    saved = JSON.parse(localStorage.getItem(STORE_ROOMS) || "[]");
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
  $("message-input").addEventListener("input", () => showError(""));
  $("nick-form").addEventListener("submit", onNickSubmit);
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openRoom($("join-input").value.trim(), true);
    $("join-input").value = "";
  });
  $("refresh-rooms").addEventListener("click", () => state.connected && send({ type: "rooms" }));
  $("reconnect-now").addEventListener("click", connect);
  window.addEventListener("online", connect);
  window.addEventListener("hashchange", () => roomsFromHash().forEach((r) => openRoom(r, true)));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.current) show(state.current, false);
  });
  setInterval(() => state.connected && !document.hidden && send({ type: "rooms" }), ROOMS_REFRESH_MS);
  connect();
}

start();
