// The benchmark's protocol subset on Socket.IO 4.8 (Node): rooms and to(room).emit, written the
// way the Socket.IO docs show it. Every message is a "msg" event carrying roomchat's JSON object.
// welcome on connect; join -> joined (members, last 50 events) and presence to the others;
// chat -> the chat event with the room's next seq to the others, and the sender's copy with its id.
// No validation beyond what the benchmark needs, no rate limit. Prints ws://127.0.0.1:PORT/...
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const HISTORY = 50;
const host = process.argv[2] || "127.0.0.1";
const port = Number(process.argv[3] || 0);
const rooms = new Map(); // name -> {seq, history, members: Map(socket.id -> nick)}
let numbers = 0;

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"], // the generator opens WebSocket directly, no long-polling first
  perMessageDeflate: false, // Socket.IO's default; said here so nobody wonders
  maxHttpBufferSize: 1 << 20,
  serveClient: false,
});

function room(name) {
  let r = rooms.get(name);
  if (!r) rooms.set(name, (r = { seq: 0, history: [], members: new Map() }));
  return r;
}

io.on("connection", (socket) => {
  const nick = `guest-${++numbers}`;
  socket.emit("msg", { type: "welcome", nick });
  socket.on("msg", (msg) => {
    if (msg.type === "chat") {
      const r = rooms.get(msg.room);
      if (!r || !r.members.has(socket.id)) {
        socket.emit("msg", { type: "error", code: "not_in_room", id: msg.id });
        return;
      }
      const event = { type: "chat", room: msg.room, from: nick, text: msg.text, seq: ++r.seq, ts: Date.now() / 1000 };
      r.history.push(event);
      if (r.history.length > HISTORY) r.history.shift();
      socket.to(msg.room).emit("msg", event);
      socket.emit("msg", { ...event, id: msg.id });
    } else if (msg.type === "join" && !socket.rooms.has(msg.room)) {
      const r = room(msg.room);
      socket.to(msg.room).emit("msg", { type: "presence", room: msg.room, event: "join", nick });
      socket.join(msg.room);
      r.members.set(socket.id, nick);
      socket.emit("msg", { type: "joined", room: msg.room, members: [...r.members.values()], history: r.history });
    }
  });
  socket.on("disconnecting", () => {
    for (const name of socket.rooms) {
      const r = rooms.get(name);
      if (!r) continue;
      r.members.delete(socket.id);
      socket.to(name).emit("msg", { type: "presence", room: name, event: "leave", nick });
    }
  });
});

httpServer.listen(port, host, 1024, () => {
  console.log(`socket.io server listening on ws://${host}:${httpServer.address().port}/socket.io/?EIO=4&transport=websocket`);
});
process.on("SIGTERM", () => process.exit(0));
