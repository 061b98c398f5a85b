def test_two_clients_chat(connect):
    """Two clients join a room and both see a chat message with seq 1."""
    a, b = connect(), connect()
    a.join("lobby")
    b.join("lobby")
    a.send(type="chat", room="lobby", text="hi", id=7)
    mine = a.recv_type("chat")
    theirs = b.recv_type("chat")
    assert mine["id"] == 7 and "id" not in theirs
    assert mine["seq"] == theirs["seq"] == 1
