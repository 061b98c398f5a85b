// The chat page's conversations: rooms and direct messages, their tabs, messages in seq order,
// members, the room list, older history, and the drawer that holds them on a phone.
//
// A message row: its time, its sender, its text with http(s) addresses as links (nothing else
// becomes markup). Rows from one sender within GROUP_S of each other are grouped (the later ones
// hide their sender and time, still there for screen readers); the first row of a day carries the
// day (data-day, shown by the stylesheet); a message naming our nick (look-alikes included) is
// marked as a mention. relate() works these out from a row's neighbours, so rows may arrive in any
// order (live, history pages, resumed).

import {
  ROOM_RE, PAGE, NEAR_BOTTOM_PX, $, state, el, clockTime, roomKey, dmKey, sameNick, foldNick, roomConvs, saveRooms,
  showError
} from "./state.js";
import { send } from "./connection.js";
import { renderHeader, renderComposer, memberItem } from "./moderation.js";
import {
  dressRow, markMentions, onStoredEvent, stoppedTyping, notify, countUnread, readUpTo, renderTyping, closeSearch,
  storedNote
} from "./team.js";

const GROUP_S = 300; // rows from one sender this close together are one group
// An http(s) address: up to whitespace or a character that cannot be in one unescaped.
const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?'")\]}>]+$/; // punctuation after an address is the sentence's, not the address's

const STORED_EVENTS = new Set(["edit", "delete", "react"]);

/** Show a room event in its room, in seq order, once: a chat as a row, an edit, delete or react
 *  applied to its row (team.js). `live` ones may count as unread. `asOf`: the seq a history
 *  item's state is from (the reply's newest; a live chat is as of its own seq). */
export function onChat(event, { live, asOf = null }) {
  if (STORED_EVENTS.has(event.type)) return onStoredEvent(event, { live });
  const conv = state.convs.get(roomKey(event.room));
  if (!conv || conv.seqs.has(event.seq)) return;
  const item = messageItem(event);
  item.dataset.seq = event.seq;
  dressRow(item, event, Math.max(asOf ?? 0, event.seq));
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
  relate(item);
  conv.oldestSeq = conv.oldestSeq === null ? event.seq : Math.min(conv.oldestSeq, event.seq);
  conv.lastSeq = Math.max(conv.lastSeq ?? 0, event.seq);
  if (live) {
    stoppedTyping(conv, event.from);
    arrived(conv, event.from, stick);
    notify(conv, event);
  }
}

export function onDm(event) {
  const mine = sameNick(event.from, state.me);
  const conv = openDm(mine ? event.to : event.from, false);
  const stick = isNearBottom(conv);
  const item = messageItem(event);
  const note = storedNote(event);
  if (note) {
    item.classList.add("stored");
    item.querySelector(".body").append(" ", note);
  }
  conv.log.append(item);
  relate(item);
  if (!mine) {
    arrived(conv, event.from, stick);
    notify(conv, event);
  } else {
    scrollToBottom(conv);
  }
}

function messageItem(event) {
  const mine = sameNick(event.from, state.me || "");
  const text = typeof event.text === "string" ? event.text : "";
  const item = el("li", { class: mine ? "msg mine" : "msg" }, clockTime(event.ts), " ",
    el("div", { class: "body" }, el("span", { class: "from", text: event.from }), " ",
      el("span", { class: "text" }, ...markMentions(linkify(text)))));
  item.dataset.ts = String(event.ts ?? Date.now() / 1000);
  item.dataset.from = foldNick(event.from);
  if (typeof event.text === "string") item.dataset.raw = event.text;
  if (!mine && mentions(text, state.me)) item.classList.add("mention");
  return item;
}

/** `text` as strings and <a> elements: each http(s) address a link that opens in a new tab with
 *  no opener or referrer; everything else stays text. Only addresses the URL parser reads as
 *  http: or https: become links (never javascript: or data:). */
export function linkify(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    const address = match[0].replace(TRAILING, "");
    let href = null;
    try {
      const url = new URL(address);
      if (url.protocol === "http:" || url.protocol === "https:") href = url.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    parts.push(text.slice(last, match.index),
      el("a", { href, rel: "noopener noreferrer", target: "_blank" }, address));
    last = match.index + address.length;
  }
  parts.push(text.slice(last));
  return parts.filter((part) => part !== "");
}

/** Whether `text` names `nick` as a word (look-alikes and a leading @ included). */
export function mentions(text, nick) {
  if (!nick) return false;
  return text.split(/[^A-Za-z0-9_.\-]+/).some((word) => word && sameNick(word.replace(/[.\-]+$/, ""), nick));
}

const dayOf = (row) => new Date(Number(row.dataset.ts) * 1000).toDateString();

function dayLabel(row) {
  const date = new Date(Number(row.dataset.ts) * 1000);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  const options = { weekday: "long", day: "numeric", month: "long" };
  if (date.getFullYear() !== today.getFullYear()) options.year = "numeric";
  return date.toLocaleDateString([], options);
}

/** Work out, for `row` and the row after it, whether each starts a day and whether it continues
 *  its sender's group. */
function relate(row) {
  for (const item of [row, row?.nextElementSibling]) {
    if (!item?.dataset.ts) continue;
    const prev = item.previousElementSibling;
    const newDay = !prev?.dataset.ts || dayOf(prev) !== dayOf(item);
    if (newDay) item.dataset.day = dayLabel(item);
    else delete item.dataset.day;
    const grouped = !newDay && item.classList.contains("msg") && prev.classList.contains("msg")
      && prev.dataset.from === item.dataset.from && Number(item.dataset.ts) - Number(prev.dataset.ts) < GROUP_S;
    item.classList.toggle("cont", grouped);
  }
}

/** A new message landed in `conv`: keep the view at the bottom, or count it as unread (a room's
 *  count comes from its read mark: team.js countUnread). */
function arrived(conv, from, stick) {
  const inView = conv.key === state.current && !document.hidden;
  if (stick && conv.key === state.current) scrollToBottom(conv);
  if (conv.kind === "room") {
    countUnread(conv);
  } else if (!inView && !sameNick(from, state.me || "")) {
    conv.unread += 1;
    renderTab(conv);
  }
}

export function onPresence(event) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv) return;
  if (event.event === "join") {
    if (!conv.members.some((m) => sameNick(m, event.nick))) conv.members.push(event.nick);
    addLine(conv, "presence", `${event.nick} joined`);
  } else {
    conv.members = conv.members.filter((m) => !sameNick(m, event.nick));
    // after a kick or ban the moderation line said it already
    if (!conv.removed.delete(foldNick(event.nick))) addLine(conv, "presence", `${event.nick} left`);
  }
  if (conv.key === state.current) renderMembers();
  renderRoomList();
}

/** All rooms with member counts; for rooms we are in, the count follows presence events live. */
export function renderRoomList() {
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
export function onHistory(event) {
  const conv = state.convs.get(roomKey(event.room));
  if (!conv) return;
  const pane = conv.pane;
  const fromBottom = pane.scrollHeight - pane.scrollTop;
  const messages = event.messages || [];
  // Older than anything shown: prepend newest first. The rest (a reload after a truncated
  // resume) is placed oldest first after what is there.
  const isOlder = (m) => conv.oldestSeq !== null && m.seq < conv.oldestSeq;
  const ordered = [...messages.filter(isOlder).reverse(), ...messages.filter((m) => !isOlder(m))];
  const asOf = Math.max(conv.lastSeq ?? 0, ...messages.map((m) => m.seq)); // the reply is as of our newest
  for (const message of ordered) onChat(message, { live: false, asOf });
  if (messages.length < PAGE && !event.truncated) conv.atBeginning = true; // a short page cut to size is not the end
  conv.loadingOlder = false;
  updateOlder(conv);
  countUnread(conv);
  pane.scrollTop = pane.scrollHeight - fromBottom; // keep what the reader was looking at in place
}

function makeConv(kind, name) {
  const key = kind === "room" ? roomKey(name) : dmKey(name);
  const log = el("ol", { class: "log", role: "log" }); // a live region: new messages are announced
  const older = el("button", { type: "button", class: "older", onclick: () => loadOlder(conv) }, "Load older messages");
  const pane = el("section", { class: "pane", hidden: "", tabindex: "0", "aria-label": paneLabel(kind, name) },
    older, log);
  const conv = {
    key, kind, name, pane, log, older,
    tab: null, tabOpen: null, tabClose: null, unread: 0, unreadMore: false, members: [], joined: false,
    mark: null, markSent: null, markTimer: null, // read up to this seq (team.js)
    typing: null, typingSentAt: 0, typingId: null, // who is typing here: Map nick -> until (Date.now() ms)
    seqs: new Set(), lastSeq: null, oldestSeq: null, atBeginning: kind === "dm", loadingOlder: false,
    topic: "", mode: { moderated: false, slow: 0 }, // the room's, from `joined`, `topic` and `mode`
    closed: null, // {text, until?}: we were kicked or banned; the room stays shown, closed
    mutedUntil: 0, slowUntil: 0, // Date.now() ms until which our chat here would be refused
    removed: new Set(), // folded nicks whose coming presence leave a kick or ban line said already
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

export function clearConv(conv, note) {
  conv.log.replaceChildren();
  conv.seqs.clear();
  conv.lastSeq = conv.oldestSeq = null;
  conv.atBeginning = conv.loadingOlder = false;
  addLine(conv, "notice", note);
}

/** Join a room (or just show it, when we are in it already); false for a name that is not a room's. */
export function openRoom(name, focus) {
  if (!ROOM_RE.test(name)) {
    showError("join", `"${name}" is not a room name: use 1-64 letters, digits, '_', '-', '.' or '#'.`);
    return false;
  }
  showError("join", "");
  let conv = state.convs.get(roomKey(name));
  if (!conv) {
    conv = makeConv("room", name);
    saveRooms();
    if (state.connected) send({ type: "join", room: name });
  }
  show(conv.key, focus);
  return true;
}

export function openDm(nick, focus) {
  const conv = state.convs.get(dmKey(nick)) || makeConv("dm", nick);
  if (focus) show(conv.key, true);
  return conv;
}

const paneLabel = (kind, name) => (kind === "room" ? `Messages in ${name}` : `Direct messages with ${name}`);

export function renameDm(conv, nick) {
  state.convs.delete(conv.key);
  conv.key = dmKey(nick);
  conv.name = nick;
  conv.pane.setAttribute("aria-label", paneLabel("dm", nick));
  state.convs.set(conv.key, conv);
  renderTab(conv);
  if (state.current !== null && !state.convs.has(state.current)) show(conv.key, false);
}

function leave(conv) {
  if (conv.kind === "room" && state.connected && !conv.closed) send({ type: "leave", room: conv.name });
  dropConv(conv);
}

export function dropConv(conv) {
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
export function show(key, focus) {
  if (key !== state.current) {
    showError("send", ""); // an error about another conversation
    closeSearch();
  }
  state.current = key;
  setDrawer(false);
  const conv = key === null ? null : state.convs.get(key);
  for (const c of state.convs.values()) {
    c.pane.hidden = c !== conv;
    renderTab(c);
  }
  $("empty-pane").hidden = !!conv;
  $("conv-title").textContent = !conv ? "No conversation" : conv.kind === "room" ? conv.name : paneLabel("dm", conv.name);
  $("message-input").placeholder = conv ? `Message ${conv.kind === "room" ? conv.name : conv.name + " (direct)"}` : "Message";
  renderHeader();
  renderComposer();
  $("search-form").hidden = conv?.kind !== "room";
  if (conv) {
    if (conv.kind === "room" && !document.hidden) readUpTo(conv);
    conv.unread = 0;
    renderTab(conv);
    scrollToBottom(conv);
    if (conv.kind === "room") history.replaceState(null, "", "#" + conv.name);
  }
  renderMembers();
  renderTyping();
  updateTitle();
  if (focus) $("message-input").focus();
}

/** Create or update a conversation's tab in place, so keyboard focus on it survives updates. */
export function renderTab(conv) {
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
    conv.tabOpen.append(" ", el("span", { class: "badge" }, `${conv.unread}${conv.unreadMore ? "+" : ""}`,
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

export function renderMembers() {
  const conv = state.convs.get(state.current);
  const list = $("member-list");
  const room = !!conv && conv.kind === "room";
  $("members").hidden = !room; // a direct-message view has no members panel
  $("layout").classList.toggle("no-members", !room);
  if (!room) {
    list.replaceChildren();
    return;
  }
  $("members-title").textContent = conv.closed ? `You are not in ${conv.name}`
    : `Members of ${conv.name} (${conv.members.length})`;
  const sorted = [...conv.members].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  replaceItems(list, sorted.map((nick) => sameNick(nick, state.me || "")
    ? el("li", { class: "me" }, nick, " (you)")
    : memberItem(conv, nick)));
}

function updateTitle() {
  const unread = [...state.convs.values()].reduce((sum, c) => sum + c.unread, 0);
  document.title = unread ? `(${unread}) roomchat` : "roomchat";
}

/** A line that is not a message (presence, moderation, a notice), at the end of the log, now. */
export function addLine(conv, kind, text) {
  const stick = isNearBottom(conv);
  const item = el("li", { class: kind }, clockTime(), " ", el("span", { class: "text", text }));
  item.dataset.ts = String(Date.now() / 1000);
  conv.log.append(item);
  relate(item);
  if (stick && conv.key === state.current) scrollToBottom(conv);
}

function isNearBottom(conv) {
  const pane = conv.pane;
  return pane.scrollHeight - pane.scrollTop - pane.clientHeight < NEAR_BOTTOM_PX;
}

export function scrollToBottom(conv) {
  conv.pane.scrollTop = conv.pane.scrollHeight;
}

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

export function updateOlder(conv) {
  conv.older.hidden = conv.atBeginning;
  conv.pane.classList.toggle("at-beginning", conv.atBeginning && conv.kind === "room");
}

/** On a phone the room list and the members are a drawer over the conversation. */
export function setDrawer(open) {
  $("layout").classList.toggle("drawer-open", open);
  $("drawer-toggle").setAttribute("aria-expanded", String(open));
}
