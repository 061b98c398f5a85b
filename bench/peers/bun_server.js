// The benchmark's protocol subset on Bun's built-in WebSocket server (uWebSockets) with topics:
// a room is a topic, ws.publish() sends one encoded event to every other subscriber, and the
// sender gets its own copy, with its id, by ws.send(). welcome on open; join -> joined (members,
// last 50 events) and presence to the others; chat -> the chat event with the room's next seq.
// No validation beyond what the benchmark needs, no rate limit. Prints ws://127.0.0.1:PORT/
const HISTORY = 50;
const host = process.argv[2] || "127.0.0.1";
const port = Number(process.argv[3] || 0);
const rooms = new Map(); // name -> {seq, history, members: Map(ws -> nick)}
let numbers = 0;

const server = Bun.serve({
  hostname: host,
  port,
  fetch(req, server) {
    if (server.upgrade(req, { data: { nick: `guest-${++numbers}`, rooms: [] } })) return;
    return new Response("WebSocket only", { status: 400 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 1 << 20,
    backpressureLimit: 8 << 20, // as roomchat's --max-outbox-bytes in the bench
    open(ws) {
      ws.send(JSON.stringify({ type: "welcome", nick: ws.data.nick }));
    },
    message(ws, raw) {
      const msg = JSON.parse(raw);
      const nick = ws.data.nick;
      if (msg.type === "chat") {
        const r = rooms.get(msg.room);
        if (!r || !r.members.has(ws)) {
          ws.send(JSON.stringify({ type: "error", code: "not_in_room", id: msg.id }));
          return;
        }
        const event = { type: "chat", room: msg.room, from: nick, text: msg.text, seq: ++r.seq, ts: Date.now() / 1000 };
        r.history.push(event);
        if (r.history.length > HISTORY) r.history.shift();
        ws.publish(msg.room, JSON.stringify(event));
        event.id = msg.id;
        ws.send(JSON.stringify(event));
      } else if (msg.type === "join" && !ws.data.rooms.includes(msg.room)) {
        let r = rooms.get(msg.room);
        if (!r) rooms.set(msg.room, (r = { seq: 0, history: [], members: new Map() }));
        ws.publish(msg.room, JSON.stringify({ type: "presence", room: msg.room, event: "join", nick }));
        ws.subscribe(msg.room);
        ws.data.rooms.push(msg.room);
        r.members.set(ws, nick);
        ws.send(JSON.stringify({ type: "joined", room: msg.room, members: [...r.members.values()], history: r.history }));
      }
    },
    close(ws) {
      for (const name of ws.data.rooms) {
        const r = rooms.get(name);
        r.members.delete(ws);
        server.publish(name, JSON.stringify({ type: "presence", room: name, event: "leave", nick: ws.data.nick }));
      }
    },
  },
});
console.log(`bun server listening on ws://${host}:${server.port}/`);
process.on("SIGTERM", () => process.exit(0));
