// The "wire" panel: open the chat page with ?wire=1 to see every WebSocket frame it sends and
// receives, as it happens, below the chat. A teaching aid, beside `python roomchat.py --trace`,
// which tells the server's side of the same frames.
//
// index.html loads this module before app.js. With ?wire=1 it puts a subclass in place of the
// browser's WebSocket, so app.js, unchanged, opens a socket that reports what goes through it.
// A browser does not show a frame's header: the panel says what RFC 6455 fixes about it (the
// page sends text frames, masked, as every client must; the server's are unmasked) and shows
// the payload's length in bytes (UTF-8) and its JSON. Everything is shown with textContent.

const MAX_ROWS = 500; // older rows are dropped, so a long session does not grow the page forever

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The panel (a heading with a count and a Clear button, then one row per event), styled by wire.css. */
function makePanel() {
  const panel = element("section", "wire");
  panel.setAttribute("aria-label", "Wire: the WebSocket frames this page sends and receives");
  const counter = element("span", "wire-count", "0 events");
  const clear = element("button", "wire-clear", "Clear");
  clear.type = "button";
  const list = element("ol", "wire-list");
  let count = 0;
  clear.addEventListener("click", () => {
    list.replaceChildren();
    count = 0;
    counter.textContent = "0 events";
  });
  const head = element("h2", "wire-head", "Wire ");
  head.append(counter, " ", clear);
  panel.append(head, list);
  const style = document.createElement("link");
  style.rel = "stylesheet";
  style.href = "/static/wire.css";
  document.head.append(style);
  document.body.append(panel);
  document.body.classList.add("wire-on");

  return function row(kind, label, detail, payload) {
    const now = new Date();
    const time = now.toLocaleTimeString([], { hour12: false }) + "." + String(now.getMilliseconds()).padStart(3, "0");
    const item = element("li", "wire-row wire-" + kind);
    item.append(element("span", "wire-time", time), element("span", "wire-dir", label),
      element("span", "wire-meta", detail));
    if (payload !== undefined) item.append(element("code", "wire-payload", payload));
    const atBottom = panel.scrollHeight - panel.scrollTop - panel.clientHeight < 40;
    list.append(item);
    while (list.childElementCount > MAX_ROWS) list.firstElementChild.remove();
    count += 1;
    counter.textContent = `${count} events`;
    if (atBottom) panel.scrollTop = panel.scrollHeight;
  };
}

function start() {
  const row = makePanel();
  const encoder = new TextEncoder();

  function frame(direction, data) {
    const label = direction === "out" ? "→ sent" : "← received";
    if (typeof data !== "string") {
      row(direction, label, `binary frame, ${data.byteLength ?? data.size} bytes`);
      return;
    }
    const mask = direction === "out" ? "masked (a client always masks)" : "unmasked (a server never masks)";
    row(direction, label, `text frame, FIN, ${mask}, ${encoder.encode(data).length} bytes`, data);
  }

  class WireSocket extends window.WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      row("note", "connecting", String(url));
      this.addEventListener("open", () => row("note", "open", "opening handshake done (HTTP 101)"));
      this.addEventListener("message", (event) => frame("in", event.data));
      this.addEventListener("close", (event) =>
        row("note", "closed", `close code ${event.code}${event.reason ? ": " + event.reason : ""}`));
    }

    send(data) {
      frame("out", data);
      super.send(data);
    }
  }

  window.WebSocket = WireSocket;
}

if (new URLSearchParams(location.search).get("wire") === "1") start();
