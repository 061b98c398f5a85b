// The chat page's moderation: what operators did (topic, kick, ban, mute, mode) shown as lines
// naming who did it; the room's header (topic, mode); the message box's state (muted, moderated,
// slow mode, each with the time left); a room we were kicked or banned from, closed with a Rejoin
// button; and, for operators only (their token's `op` claim), the controls: a member's menu (mute,
// kick, ban), the room settings (topic, moderated, slow mode).
//
// Clocks: the server gives durations in seconds (`duration`, `retry_after`, `slow`); the page keeps
// each as a Date.now() deadline and one ticker (TICK_MS) redraws the countdowns while any runs.

import { $, state, el, roomKey, sameNick, foldNick, isOp, duration, showError } from "./state.js";
import { send } from "./connection.js";
import { addLine, renderMembers, openDm } from "./view.js";
import { menuItem, menuList } from "./menu.js";

const TICK_MS = 1000;
let ticker = null;
let menuFor = null; // the folded nick whose member menu is open, or null
let pendingAction = null; // {kind, room, nick}: what the moderation dialog will send

const roomOf = (event) => state.convs.get(roomKey(event.room));
const current = () => state.convs.get(state.current);
const reasonPart = (event) => (event.reason ? `: ${event.reason}` : "");

/** "0:45", "12:03": time left until `deadline` (Date.now() ms), rounded up to the second. */
function left(deadline) {
  const seconds = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function until(deadline) {
  return new Date(deadline).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
}

// -- events ------------------------------------------------------------------------------------

export function onTopic(event) {
  const conv = roomOf(event);
  if (!conv) return;
  conv.topic = event.topic;
  addLine(conv, "moderation", event.topic ? `${event.by} set the topic: ${event.topic}` : `${event.by} cleared the topic`);
  if (conv.key === state.current) renderHeader();
}

/** A kick, or a ban (`duration` 0: lifted). Of us: the room closes, with the reason and Rejoin. */
export function onKickOrBan(event) {
  const conv = roomOf(event);
  if (!conv) return;
  const ban = event.type === "ban";
  if (ban && !event.duration) {
    addLine(conv, "moderation", `${event.by} lifted the ban on ${event.nick}`);
    return;
  }
  const what = ban ? `banned ${event.nick} for ${duration(event.duration)}` : `kicked ${event.nick}`;
  if (!sameNick(event.nick, state.me || "")) {
    addLine(conv, "moderation", `${event.by} ${what}${reasonPart(event)}`);
    if (conv.members.some((m) => sameNick(m, event.nick))) conv.removed.add(foldNick(event.nick));
    conv.members = conv.members.filter((m) => !sameNick(m, event.nick));
    if (conv.key === state.current) renderMembers();
    return;
  }
  const end = ban ? Date.now() + event.duration * 1000 : 0;
  const text = ban
    ? `${event.by} banned you from ${conv.name} until ${until(end)} (${duration(event.duration)})${reasonPart(event)}.`
    : `${event.by} kicked you from ${conv.name}${reasonPart(event)}.`;
  addLine(conv, "moderation", text);
  conv.joined = false;
  conv.members = [];
  conv.closed = { text, until: end };
  if (conv.key === state.current) {
    renderMembers();
    renderComposer();
  }
}

export function onMute(event) {
  const conv = roomOf(event);
  if (!conv) return;
  const me = sameNick(event.nick, state.me || "");
  const who = me ? "you" : event.nick;
  if (event.duration) {
    addLine(conv, "moderation", `${event.by} muted ${who} for ${duration(event.duration)}${reasonPart(event)}`);
  } else {
    addLine(conv, "moderation", `${event.by} unmuted ${who}`);
  }
  if (me) {
    conv.mutedUntil = event.duration ? Date.now() + event.duration * 1000 : 0;
    renderComposer();
  }
}

export function onMode(event) {
  const conv = roomOf(event);
  if (!conv) return;
  const before = conv.mode;
  const after = { moderated: !!event.moderated, slow: Number(event.slow) || 0 };
  conv.mode = after;
  const said = [];
  if (after.moderated !== before.moderated) {
    said.push(after.moderated ? "made the room moderated (only operators write)" : "ended moderation");
  }
  if (after.slow !== before.slow) {
    said.push(after.slow ? `set slow mode: one message per ${duration(after.slow)}` : "turned slow mode off");
  }
  if (!said.length) said.push(`kept the mode: ${modeText(after) || "open"}`);
  addLine(conv, "moderation", `${event.by} ${said.join(" and ")}`);
  if (conv.key === state.current) {
    renderHeader();
    renderComposer();
  }
}

/** A chat refused for a moderation reason: keep its deadline, so the box counts down. True when
 *  the error was one of these (the caller still shows its sentence). */
export function onChatRefused(event, request) {
  const conv = state.convs.get(roomKey(request.room));
  if (!conv) return false;
  const retry = Number(event.retry_after) || 0;
  if (event.code === "forbidden" && retry) conv.mutedUntil = Date.now() + retry * 1000;
  else if (event.code === "slow_mode") conv.slowUntil = Date.now() + Math.max(1, retry) * 1000;
  else if (event.code === "moderated") conv.mode = { ...conv.mode, moderated: true };
  else return false;
  renderHeader();
  renderComposer();
  return true;
}

/** A chat of ours is going out to `room`: in slow mode, the next one waits. */
export function sentChat(room) {
  const conv = state.convs.get(roomKey(room));
  if (conv && conv.mode.slow && !isOp(room)) {
    conv.slowUntil = Date.now() + conv.mode.slow * 1000;
    renderComposer();
  }
}

/** `joined` for a room: what it says of the topic and the mode; a closed room is open again. */
export function onJoinedRoom(conv, event) {
  conv.topic = event.topic || "";
  const mode = event.mode || {};
  conv.mode = { moderated: !!mode.moderated, slow: Number(mode.slow) || 0 };
  conv.closed = null;
  $("rejoin-note").textContent = "";
  if (conv.key === state.current) {
    renderHeader();
    renderComposer();
  }
}

/** A refused rejoin of a closed room: say why next to the button. True when it was one. */
export function onRejoinRefused(room, message) {
  const conv = state.convs.get(roomKey(room));
  if (!conv?.closed) return false;
  if (conv.key === state.current) $("rejoin-note").textContent = `Could not rejoin: ${message}`;
  return true;
}

// -- the header, the message box, the closed room ------------------------------------------------

function modeText(mode) {
  const parts = [];
  if (mode.moderated) parts.push("Moderated");
  if (mode.slow) parts.push(`Slow mode: ${duration(mode.slow)}`);
  return parts.join(" · ");
}

export function renderHeader() {
  const conv = current();
  const room = conv?.kind === "room" ? conv : null;
  $("conv-topic").textContent = room?.topic || "";
  $("conv-topic").hidden = !room?.topic;
  $("conv-topic").title = room?.topic || "";
  const mode = room ? modeText(room.mode) : "";
  $("conv-mode").textContent = mode;
  $("conv-mode").hidden = !mode;
  const op = !!room && isOp(room.name);
  $("settings-button").hidden = !op;
  $("op-badge").hidden = !state.identity?.op;
  if (!op) closeSettings();
}

/** The message box for the conversation in view: closed (kicked, banned), muted, moderated or
 *  waiting for slow mode, each said where you type, with the time left. */
export function renderComposer() {
  const conv = current();
  const room = conv?.kind === "room" ? conv : null;
  const now = Date.now();
  $("closed").hidden = !room?.closed;
  $("send-form").hidden = !!room?.closed;
  if (room?.closed) {
    $("closed-text").textContent = room.closed.text;
    const banned = room.closed.until > now;
    $("rejoin").textContent = banned ? `Rejoin (banned for ${left(room.closed.until)} more)` : "Rejoin";
    if (!$("rejoin-note").textContent) {
      $("rejoin-note").textContent = banned
        ? "The server refuses a banned nick until the ban ends; an operator may lift it sooner."
        : "Rejoining may be refused if an operator has banned you meanwhile.";
    }
  }
  const op = !!room && isOp(room.name);
  let note = "";
  let wait = "";
  if (room && !room.closed && !op) {
    if (room.mutedUntil > now) {
      note = `You are muted in ${room.name}: ${left(room.mutedUntil)} left. You can still read.`;
      wait = "Muted";
    } else if (room.mode.moderated) {
      note = `${room.name} is moderated: only operators can write here. You can still read.`;
      wait = "Read only";
    } else if (room.slowUntil > now) {
      wait = `Wait ${left(room.slowUntil)}`;
    }
  }
  $("composer-note").textContent = note;
  $("composer-note").hidden = !note;
  $("send-button").textContent = wait || "Send";
  $("send-button").disabled = !!wait;
  $("send-button").title = room?.mode.slow && !op ? `Slow mode: one message per ${duration(room.mode.slow)}` : "";
  const running = [...state.convs.values()].some((c) => c.mutedUntil > now || c.slowUntil > now
    || c.closed?.until > now);
  if (running && !ticker) ticker = setInterval(renderComposer, TICK_MS);
  if (!running && ticker) {
    clearInterval(ticker);
    ticker = null;
  }
}

/** Why a chat to the room in view cannot go now (muted, moderated, slow mode), or "". */
export function chatBlocked() {
  const conv = current();
  if (conv?.kind !== "room" || isOp(conv.name)) return "";
  const now = Date.now();
  if (conv.mutedUntil > now) return `You are muted here for ${left(conv.mutedUntil)} more; your message stays in the box.`;
  if (conv.mode.moderated) return "Only operators can write in a moderated room; your message stays in the box.";
  if (conv.slowUntil > now) return `Slow mode: wait ${left(conv.slowUntil)}; your message stays in the box.`;
  return "";
}

// -- operator controls ---------------------------------------------------------------------------

/** A member in the list: their nick opens a menu with "Message", and for an operator of the room
 *  also Mute, Kick and Ban. */
export function memberItem(conv, nick) {
  const open = menuFor === foldNick(nick);
  const button = el("button", { type: "button", class: "link member", "aria-haspopup": "menu",
    "aria-expanded": String(open), onclick: () => {
      menuFor = open ? null : foldNick(nick);
      renderMembers();
      $("member-list").querySelector('.member-menu [role="menuitem"]')?.focus(); // an opened menu's first
    } }, nick);
  const item = el("li", {}, button);
  if (!open) return item;
  const close = () => {
    button.focus(); // the redraw gives the focus to the nick's new button (view.js, replaceItems)
    menuFor = null;
    renderMembers();
  };
  const menu = menuList(`Actions for ${nick}`, close, { class: "member-menu" }, menuItem("Message", () => {
    menuFor = null;
    openDm(nick, true);
  }));
  if (isOp(conv.name)) {
    for (const kind of ["mute", "kick", "ban"]) {
      menu.append(menuItem(`${kind[0].toUpperCase()}${kind.slice(1)}…`, () => askModeration(kind, conv.name, nick)));
    }
  }
  item.append(menu);
  return item;
}

function askModeration(kind, room, nick) {
  menuFor = null;
  renderMembers();
  pendingAction = { kind, room, nick };
  const verb = { mute: "Mute", kick: "Kick", ban: "Ban" }[kind];
  $("mod-title").textContent = `${verb} ${nick} ${kind === "kick" ? "from" : "in"} ${room}`;
  $("duration-row").hidden = kind === "kick";
  $("mod-duration").value = kind === "mute" ? "300" : "600";
  $("mod-reason").value = "";
  $("mod-confirm").textContent = verb;
  $("mod-dialog").showModal();
  $("mod-reason").focus();
}

function confirmModeration(e) {
  e.preventDefault();
  const action = pendingAction;
  pendingAction = null;
  $("mod-dialog").close();
  if (!action || !state.connected) return;
  const msg = { type: action.kind, room: action.room, nick: action.nick };
  const reason = $("mod-reason").value.trim();
  if (reason) msg.reason = reason;
  if (action.kind !== "kick") msg.duration = Number($("mod-duration").value);
  send(msg);
}

function openSettings() {
  const conv = current();
  if (!conv || conv.kind !== "room") return;
  $("topic-input").value = conv.topic;
  $("moderated-input").checked = conv.mode.moderated;
  const slow = $("slow-input");
  if (![...slow.options].some((o) => Number(o.value) === conv.mode.slow)) {
    slow.append(el("option", { value: String(conv.mode.slow) }, duration(conv.mode.slow)));
  }
  slow.value = String(conv.mode.slow);
  showError("settings", "");
  $("settings-form").hidden = false;
  $("settings-button").setAttribute("aria-expanded", "true");
  $("topic-input").focus();
}

function closeSettings() {
  $("settings-form").hidden = true;
  $("settings-button").setAttribute("aria-expanded", "false");
}

/** Save the room settings: a `topic` request if the topic changed, a `mode` request with the
 *  fields that changed. */
function saveSettings(e) {
  e.preventDefault();
  const conv = current();
  if (!conv || conv.kind !== "room") return;
  if (!state.connected) return showError("settings", "Not connected: try again once we reconnect.");
  const topic = $("topic-input").value.trim();
  if ([...topic].length > 300) return showError("settings", "A topic is at most 300 characters.");
  if (topic !== conv.topic) send({ type: "topic", room: conv.name, topic });
  const mode = { type: "mode", room: conv.name };
  const moderated = $("moderated-input").checked;
  const slow = Number($("slow-input").value);
  if (moderated !== conv.mode.moderated) mode.moderated = moderated;
  if (slow !== conv.mode.slow) mode.slow = slow;
  if ("moderated" in mode || "slow" in mode) send(mode);
  closeSettings();
}

/** A refused moderation request: said in its room (or next to the settings when no room has it). */
export function onModerationRefused(request, message) {
  const conv = state.convs.get(roomKey(request.room));
  const what = { topic: "set the topic", mode: "change the mode", kick: `kick ${request.nick}`,
    ban: `ban ${request.nick}`, mute: `mute ${request.nick}` }[request.type];
  if (conv) addLine(conv, "notice", `Could not ${what}: ${message}`);
  else showError("send", `Could not ${what}: ${message}`);
}

export function startModeration() {
  $("settings-button").addEventListener("click", () => ($("settings-form").hidden ? openSettings() : closeSettings()));
  $("settings-cancel").addEventListener("click", closeSettings);
  $("settings-form").addEventListener("submit", saveSettings);
  $("topic-input").addEventListener("input", () => showError("settings", ""));
  $("mod-form").addEventListener("submit", confirmModeration);
  $("mod-cancel").addEventListener("click", () => {
    pendingAction = null;
    $("mod-dialog").close();
  });
  $("rejoin").addEventListener("click", () => {
    const conv = current();
    if (!conv?.closed) return;
    if (!state.connected) {
      $("rejoin-note").textContent = "Not connected: try again once we reconnect.";
      return;
    }
    $("rejoin-note").textContent = "Asking to join again…";
    send(conv.lastSeq === null ? { type: "join", room: conv.name } : { type: "join", room: conv.name, after: conv.lastSeq });
  });
}
