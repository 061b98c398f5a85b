// Nicks on the page, by the server's rules (chatserver/protocol.py NICK_RE and fold_nick): the one
// place the page says what a nick is and when two nicks are the same. A module with no imports and
// no DOM, so node can load it too (`node --input-type=module`, or `--experimental-default-type=module`).

/** What a nick may be: 1-32 of A-Z a-z 0-9 _ . - */
export const NICK_RE = /^[A-Za-z0-9_.\-]{1,32}$/;

// After lower-casing, the ASCII characters that look alike: I/l/1 (so also i) and O/0.
const LOOKALIKES = { i: "l", 1: "l", 0: "o" };

/** The form that look-alike nicks share, as the server folds them: case, then "rn" -> "m", then
 *  i, l, 1 -> "l" and 0 -> "o". foldNick("Bi11") === foldNick("bill"); foldNick("rnoe") === foldNick("Moe"). */
export function foldNick(nick) {
  return String(nick).toLowerCase().replaceAll("rn", "m").replace(/[i10]/g, (ch) => LOOKALIKES[ch]);
}

/** Whether `a` and `b` are one nick to the server (look-alikes included). */
export const sameNick = (a, b) => foldNick(a) === foldNick(b);
