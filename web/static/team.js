// What a team's chat adds to a room's messages: edit and delete (your own, within the server's edit
// window; operators delete any), reactions, who is typing, read marks and the unread counts they
// give, @mentions and browser notifications, search, and direct messages that waited.
//
// Stored room events (edit, delete, react) take the room's seqs like chats. Each seq is applied
// once (conv.seqs), and each message row keeps in data-state the seq its state is from: a chat
// from `joined` or `history` comes in its current state (as of the reply, so as of the last seq
// we had then), live ones as of their own seq. An edit, delete or react changes a row only when
// it is newer than the row's state, so the end state is the same whatever order live events,
// replayed ones (`join` with `after`) and older pages arrive in.
//
// Read marks: a room in view in a visible tab is read up to its last seq; the page tells the
// server (`mark`, at most one per room per MARK_DELAY_MS) and the server tells a new connection
// of the same identity (`welcome.marks`, `joined.mark`). A room's unread count is its chats after
// the mark, from others, not deleted.

import { $, state, el, clockTime, roomKey, sameNick, isOp } from "./state.js";
import { send } from "./connection.js";
import { addLine, renderTab, show, linkify, mentions } from "./view.js";
import { menuItem, menuList } from "./menu.js";

export const QUICK_REACTIONS = ["👍", "❤️", "😄", "🎉", "👀", "✅"];
export const TYPING_INTERVAL_MS = 3000; // the server passes at most one `typing` per nick and room per 3 s
const TYPING_SHOWN_MS = 6000; // "ann is typing…" goes after this long without another
const MARK_DELAY_MS = 1000;
const DEFAULT_EDIT_WINDOW = 900; // seconds, when welcome.limits does not say (an older server)
const SEARCH_PAGE = 20;

const roomOf = (event) => state.convs.get(roomKey(event.room));
const rowOf = (conv, seq) => conv.log.querySelector(`li.msg[data-seq="${Number(seq)}"]`);
const mine = (nick) => sameNick(nick, state.me || "");
const inView = (conv) => conv.key === state.current && !document.hidden;

// -- text: links and @mentions --------------------------------------------------------------------

/** Whether `text` has `@nick` (look-alikes included) for `nick`. */
export function atMentions(text, nick) {
  if (!nick || !text) return false;
  return [...text.matchAll(/@([A-Za-z0-9_.\-]+)/g)].some((m) => sameNick(m[1].replace(/[.\-]+$/, ""), nick));
}

/** The strings of `parts` (from linkify) with each `@nick` in a <span class="at">, ours also "at-me". */
export function markMentions(parts) {
  const out = [];
  for (const part of parts) {
    if (typeof part !== "string") {
      out.push(part);
      continue;
    }
    let last = 0;
    for (const match of part.matchAll(/(^|[^A-Za-z0-9_.\-])(@[A-Za-z0-9_.\-]*[A-Za-z0-9_])/g)) {
      const start = match.index + match[1].length;
      const word = match[2];
      out.push(part.slice(last, start),
        el("span", { class: mine(word.slice(1)) ? "at at-me" : "at" }, word));
      last = start + word.length;
    }
    out.push(part.slice(last));
  }
  return out.filter((p) => p !== "");
}

// -- a message row's state -------------------------------------------------------------------------

/** Fill a room message row from a chat event or history item (its current state), as of seq `asOf`. */
export function dressRow(item, event, asOf) {
  item.dataset.author = event.from;
  item.dataset.state = String(asOf ?? event.seq);
  item.reactions = {};
  const body = item.querySelector(".body");
  body.append(el("span", { class: "edited", hidden: "" }), el("div", { class: "reactions" }));
  if (event.deleted) {
    markDeleted(item); // no menu: nothing is left to react to, edit or delete
  } else {
    if (event.edited) showEdited(item, event.edited);
    setReactions(item, event.reactions || {});
    item.append(actionsButton(item));
  }
}

function setText(item, text) {
  item.querySelector(".text").replaceChildren(...markMentions(linkify(text)));
  item.dataset.raw = text;
}

function showEdited(item, ts) {
  const mark = item.querySelector(".edited");
  mark.hidden = false;
  mark.textContent = "(edited)";
  mark.title = `Edited ${new Date(ts * 1000).toLocaleString()}`;
}

function markDeleted(item) {
  item.classList.add("deleted");
  item.classList.remove("mention");
  item.querySelector(".text").replaceChildren("message deleted");
  delete item.dataset.raw;
  item.querySelector(".edited").hidden = true;
  item.reactions = {};
  item.querySelector(".reactions").replaceChildren();
  item.querySelector(".msg-actions")?.remove();
  if (openMenu?.item === item) closeMenu();
}

/** Reactions as chips: the emoji and how many, naming who reacted; ours pressed; a click toggles ours. */
function setReactions(item, reactions) {
  item.reactions = {};
  for (const [emoji, nicks] of Object.entries(reactions)) if (nicks.length) item.reactions[emoji] = [...nicks];
  renderReactions(item);
}

function renderReactions(item) {
  const chips = Object.entries(item.reactions).map(([emoji, nicks]) => {
    const who = nicks.join(", ");
    const pressed = nicks.some(mine);
    return el("button", { type: "button", class: "chip", title: `${emoji} ${who}`, "aria-pressed": String(pressed),
      "aria-label": `${emoji} ${nicks.length}: ${who}${pressed ? " (click to take yours back)" : ""}`,
      "data-emoji": emoji, onclick: () => react(item, emoji) }, `${emoji} ${nicks.length}`);
  });
  item.querySelector(".reactions").replaceChildren(...chips);
}

/** An edit, delete or react event (live, replayed, or in a history page): applied once, and only
 *  to a row whose state is older. */
export function onStoredEvent(event, { live = false } = {}) {
  const conv = roomOf(event);
  if (!conv || conv.seqs.has(event.seq)) return;
  conv.seqs.add(event.seq);
  conv.lastSeq = Math.max(conv.lastSeq ?? 0, event.seq);
  conv.oldestSeq = conv.oldestSeq === null ? event.seq : Math.min(conv.oldestSeq, event.seq);
  const item = rowOf(conv, event.target);
  if (item && !item.classList.contains("deleted") && event.seq > Number(item.dataset.state)) {
    item.dataset.state = String(event.seq);
    if (event.type === "edit" && typeof event.text === "string") {
      setText(item, event.text);
      showEdited(item, event.ts);
      item.classList.toggle("mention", !item.classList.contains("mine") && mentions(event.text, state.me));
    } else if (event.type === "delete") {
      markDeleted(item);
    } else if (event.type === "react") {
      const nicks = (item.reactions[event.emoji] || []).filter((n) => !sameNick(n, event.from));
      if (event.on) nicks.push(event.from);
      if (nicks.length) item.reactions[event.emoji] = nicks;
      else delete item.reactions[event.emoji];
      renderReactions(item);
    }
  }
  if (live) countUnread(conv);
}

// -- the message menu ------------------------------------------------------------------------------

let openMenu = null; // {item, menu} of the one open menu

/** Seconds after sending it that its author may edit or delete a chat (welcome.limits; 0: never). */
function editWindow() {
  const given = state.limits.edit_window;
  return typeof given === "number" && given >= 0 ? given : DEFAULT_EDIT_WINDOW;
}

function canEdit(item) {
  return item.classList.contains("mine") && Date.now() / 1000 - Number(item.dataset.ts) < editWindow();
}

function canDelete(item, conv) {
  return canEdit(item) || isOp(conv.name);
}

function actionsButton(item) {
  const button = el("button", { type: "button", class: "msg-actions", "aria-haspopup": "menu",
    "aria-expanded": "false", title: "React, edit or delete",
    onclick: () => (openMenu?.item === item ? closeMenu(true) : showMenu(item)) }, "⋯");
  button.setAttribute("aria-label", `Actions for the message from ${item.dataset.author}`);
  return button;
}

function convOfRow(item) {
  return [...state.convs.values()].find((c) => c.log.contains(item));
}

function showMenu(item) {
  closeMenu();
  const conv = convOfRow(item);
  if (!conv) return;
  const reactions = QUICK_REACTIONS.map((emoji) => menuItem(emoji, () => {
    closeMenu(true);
    react(item, emoji);
  }, { class: "quick", "aria-label": `React with ${emoji}`, title: `React with ${emoji}` }));
  const menu = menuList("Message actions", () => closeMenu(true), { class: "msg-menu" }, ...reactions);
  if (canEdit(item)) menu.append(menuItem("Edit", () => startEdit(item)));
  if (canDelete(item, conv)) menu.append(menuItem("Delete", () => confirmDelete(item, menu)));
  item.append(menu);
  openMenu = { item, menu };
  item.querySelector(".msg-actions").setAttribute("aria-expanded", "true");
  menu.querySelector("button").focus();
}

export function closeMenu(refocus = false) {
  if (!openMenu) return;
  const { item, menu } = openMenu;
  openMenu = null;
  menu.remove();
  const button = item.querySelector(".msg-actions");
  button?.setAttribute("aria-expanded", "false");
  if (refocus) button?.focus();
}

/** The menu asks first: it becomes the question (its name too), Delete and Cancel. */
function confirmDelete(item, menu) {
  const conv = convOfRow(item);
  const theirs = !item.classList.contains("mine");
  const question = theirs ? `Delete ${item.dataset.author}'s message for everyone?` : "Delete this message for everyone?";
  menu.setAttribute("aria-label", question);
  menu.replaceChildren(el("li", { role: "none", class: "question" }, question),
    menuItem("Delete", () => {
      closeMenu(true);
      if (conv && state.connected) send({ type: "delete", room: conv.name, seq: Number(item.dataset.seq) });
    }, { class: "danger" }),
    menuItem("Cancel", () => closeMenu(true)));
  menu.querySelector(".danger").focus();
}

function react(item, emoji) {
  const conv = convOfRow(item);
  if (!conv || !state.connected || item.classList.contains("deleted")) return;
  send({ type: "react", room: conv.name, seq: Number(item.dataset.seq), emoji });
}

/** Edit in place: the text becomes a box; Enter saves, Shift+Enter is a new line, Escape cancels. */
function startEdit(item) {
  closeMenu();
  const conv = convOfRow(item);
  if (!conv || item.querySelector(".edit-form")) return;
  const text = item.querySelector(".text");
  const box = el("textarea", { class: "edit-box", rows: "2", "aria-label": "Edit your message" });
  box.value = item.dataset.raw ?? text.textContent;
  const done = () => {
    form.remove();
    text.hidden = false;
    item.querySelector(".msg-actions")?.focus();
  };
  const form = el("form", { class: "edit-form" }, box,
    el("button", { type: "submit" }, "Save"), el("button", { type: "button", onclick: done }, "Cancel"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = box.value.trim();
    if (next && next !== item.dataset.raw && state.connected) {
      send({ type: "edit", room: conv.name, seq: Number(item.dataset.seq), text: next });
    }
    done();
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    } else if (e.key === "Escape") {
      e.stopPropagation();
      done();
    }
  });
  text.hidden = true;
  text.after(form);
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

/** A refused edit, delete or react: said in its room. */
export function onTeamRefused(request, message) {
  const conv = state.convs.get(roomKey(request.room));
  const what = { edit: "edit that message", delete: "delete that message", react: `react with ${request.emoji}`,
    search: "search" }[request.type];
  if (request.type === "search") return showSearchNote(message);
  if (conv) addLine(conv, "notice", `Could not ${what}: ${message}`);
}

// -- typing ----------------------------------------------------------------------------------------

/** The message box changed: tell the room we are typing, at most once per TYPING_INTERVAL_MS. */
export function typed(text) {
  const conv = state.convs.get(state.current);
  if (!text || !conv || conv.kind !== "room" || !conv.joined || !state.connected) return;
  const now = Date.now();
  if (now - (conv.typingSentAt || 0) < TYPING_INTERVAL_MS) return;
  conv.typingSentAt = now;
  if (conv.typingId) state.inflight.delete(conv.typingId); // `typing` has no reply
  conv.typingId = send({ type: "typing", room: conv.name });
}

export function onTyping(event) {
  const conv = roomOf(event);
  if (!conv || mine(event.nick)) return;
  conv.typing ??= new Map();
  conv.typing.set(event.nick, Date.now() + TYPING_SHOWN_MS);
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

/** A chat from `nick` ends their typing. */
export function stoppedTyping(conv, nick) {
  if (conv.typing?.delete(nick)) renderTyping();
}

export function renderTyping() {
  const conv = state.convs.get(state.current);
  const now = Date.now();
  for (const c of state.convs.values()) {
    for (const [nick, until] of c.typing || []) if (until <= now) c.typing.delete(nick);
  }
  const nicks = conv?.typing ? [...conv.typing.keys()] : [];
  let text = "";
  if (nicks.length === 1) text = `${nicks[0]} is typing…`;
  else if (nicks.length === 2) text = `${nicks[0]} and ${nicks[1]} are typing…`;
  else if (nicks.length > 2) text = "Several people are typing…";
  $("typing").textContent = text;
}

// -- read marks and unread counts --------------------------------------------------------------

/** Count a room's unread chats (after its mark, from others, not deleted); a room in view in a
 *  visible tab is read first. */
export function countUnread(conv) {
  if (conv.kind !== "room") return;
  if (inView(conv)) readUpTo(conv);
  const mark = conv.mark ?? conv.lastSeq ?? 0;
  let count = 0;
  for (const row of conv.log.querySelectorAll("li.msg")) {
    if (Number(row.dataset.seq) > mark && !row.classList.contains("mine") && !row.classList.contains("deleted")) {
      count += 1;
    }
  }
  conv.unread = count;
  conv.unreadMore = count > 0 && !conv.atBeginning && conv.oldestSeq !== null && mark < conv.oldestSeq - 1;
  renderTab(conv);
}

/** We have read `conv` up to its last seq: say so to the server (once per MARK_DELAY_MS). */
export function readUpTo(conv) {
  if (conv.kind !== "room" || !conv.lastSeq) return;
  conv.mark = Math.max(conv.mark ?? 0, conv.lastSeq);
  if (conv.markTimer || conv.mark <= (conv.markSent ?? 0)) return;
  conv.markTimer = setTimeout(() => {
    conv.markTimer = null;
    if (state.convs.get(conv.key) !== conv || !state.connected || !conv.joined) return; // `joined` reads it again
    if (conv.mark > (conv.markSent ?? 0)) {
      conv.markSent = conv.mark;
      send({ type: "mark", room: conv.name, seq: conv.mark });
    }
  }, MARK_DELAY_MS);
}

/** The reply to `mark`: the server's mark (never lower than it was). */
export function onMark(event) {
  const conv = roomOf(event);
  if (!conv) return;
  conv.mark = Math.max(conv.mark ?? 0, event.seq);
  conv.markSent = Math.max(conv.markSent ?? 0, event.seq);
  conv.pane.dataset.marked = String(event.seq); // what the server keeps (tests read it)
  countUnread(conv);
}

/** `joined`: where this identity stopped reading (joined.mark, or welcome.marks), else the newest. */
export function joinedMark(conv, event, firstJoin) {
  const kept = [event.mark, state.marks?.[conv.name]].filter((m) => Number.isInteger(m)); // the server's
  if (kept.length) conv.markSent = Math.max(conv.markSent ?? 0, ...kept);
  const known = [...kept, conv.mark].filter((m) => Number.isInteger(m));
  conv.mark = known.length ? Math.max(...known) : firstJoin ? conv.lastSeq : conv.mark;
  countUnread(conv);
}

// -- notifications -------------------------------------------------------------------------------

const notifications = () => ("Notification" in window ? window.Notification : null);

/** The notifications button: shown while the browser can still be asked; asking is only ever on its click. */
export function renderNotifyButton() {
  const api = notifications();
  const button = $("notify-button");
  button.hidden = !api || api.permission !== "default";
  $("notify-state").hidden = !api || api.permission !== "granted";
}

function askNotifications() {
  const api = notifications();
  if (!api) return;
  const done = () => renderNotifyButton();
  try {
    const asked = api.requestPermission(done);
    if (asked?.then) asked.then(done, done);
  } catch {
    done();
  }
}

/** A live mention of us in a room, or a direct message to us, while the tab is hidden. */
export function notify(conv, event) {
  const api = notifications();
  if (!api || api.permission !== "granted" || !document.hidden || mine(event.from)) return;
  const mention = conv.kind === "room" && mentions(event.text || "", state.me);
  if (conv.kind === "room" && !mention) return;
  const title = conv.kind === "room" ? `${event.from} in ${conv.name}` : `${event.from} (direct message)`;
  try {
    const shown = new api(title, { body: event.text, tag: conv.key });
    shown.onclick = () => {
      window.focus();
      show(conv.key, true);
      shown.close();
    };
  } catch {
    // a browser that only notifies from a service worker: the unread counts still say it
  }
}

// -- search ------------------------------------------------------------------------------------

let search = null; // {room, q, before, id} of the search shown

function startSearch(e) {
  e.preventDefault();
  const conv = state.convs.get(state.current);
  const q = $("search-input").value.trim();
  if (!conv || conv.kind !== "room" || !q) return;
  search = { room: conv.name, q, before: null, id: null };
  $("search-list").replaceChildren();
  $("search-title").textContent = `Results for “${q}” in ${conv.name}`;
  $("search-results").hidden = false;
  moreResults();
}

function moreResults() {
  if (!search) return;
  if (!state.connected) return showSearchNote("Not connected: try again once we reconnect.");
  showSearchNote("Searching…");
  $("search-more").hidden = true;
  const msg = { type: "search", room: search.room, q: search.q, limit: SEARCH_PAGE };
  if (search.before !== null) msg.before = search.before;
  search.id = send(msg);
}

function showSearchNote(text) {
  $("search-note").textContent = text;
  $("search-note").hidden = !text;
}

export function closeSearch() {
  search = null;
  $("search-results").hidden = true;
}

/** A page of results, newest first; "More results" asks for the page before the last one shown. */
export function onSearch(event) {
  if (!search || event.id !== search.id) return;
  const messages = event.messages || [];
  for (const m of messages) {
    const text = typeof m.text === "string" ? m.text : "";
    const body = el("div", { class: "body" }, el("span", { class: "from", text: m.from }), " ",
      el("span", { class: "text" }, ...markMentions(linkify(text))));
    if (m.edited) body.append(el("span", { class: "edited", title: `Edited ${new Date(m.edited * 1000).toLocaleString()}` },
      "(edited)"));
    $("search-list").append(el("li", { class: "result", "data-seq": String(m.seq) }, clockTime(m.ts), " ", body));
  }
  if (messages.length) search.before = messages[messages.length - 1].seq;
  const more = messages.length > 0 && (messages.length >= SEARCH_PAGE || !!event.truncated);
  $("search-more").hidden = !more;
  const count = $("search-list").children.length;
  showSearchNote(count ? "" : "Nothing found.");
}

// -- direct messages that waited ---------------------------------------------------------------

/** A note on a stored direct message: ours waits for its recipient; theirs waited for us. */
export function storedNote(event) {
  if (event.stored !== true) return null;
  const text = mine(event.from)
    ? `Saved: ${event.to} is offline and gets it when they connect.`
    : `Sent while you were away (${new Date((event.ts || 0) * 1000).toLocaleString()}).`;
  return el("span", { class: "stored-note" }, text);
}

export function startTeam() {
  $("notify-button").addEventListener("click", askNotifications);
  renderNotifyButton();
  $("search-form").addEventListener("submit", startSearch);
  $("search-more").addEventListener("click", moreResults);
  $("search-close").addEventListener("click", closeSearch);
  document.addEventListener("click", (e) => {
    // a click elsewhere closes the menu (one inside it may have replaced its own button: isConnected)
    if (openMenu && e.target.isConnected && !openMenu.item.contains(e.target)) closeMenu();
  });
}
