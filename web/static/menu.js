// The page's menus, as desktop apps have them (the WAI-ARIA menu pattern,
// https://www.w3.org/WAI/ARIA/apg/patterns/menu/): a list of actions that a screen reader
// announces as a menu, moved through with the arrow keys rather than Tab. Both menus are made
// here: a message's "⋯" menu (team.js) and a member's menu (moderation.js). Their opener (a
// button with aria-haspopup and aria-expanded) gives the first item the focus when it opens one.
//
// Keys while the focus is in a menu:
//   ArrowDown, ArrowRight   the next item (after the last: the first)
//   ArrowUp, ArrowLeft      the previous item (before the first: the last)
//   Home, End               the first, the last item
//   Enter, Space            the item's action (an item is a <button>: the browser clicks it)
//   Escape                  closes the menu; the focus goes back to its opener
//   Tab, Shift+Tab          close it too, and the focus moves on from its opener
// Left and Right move as Down and Up do because both menus lay their items out in a row (a
// message's menu starts with a row of six reactions).

import { el } from "./state.js";

const STEPS = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 };

/** A menu item: <li role="none"><button role="menuitem">`label`</button></li>, whose click (a
 *  mouse, Enter or Space) runs `run`. It is out of the Tab order (tabindex -1): the arrows reach
 *  it. `attrs` go on the button (as el() takes them). */
export function menuItem(label, run, attrs = {}) {
  return el("li", { role: "none" },
    el("button", { type: "button", role: "menuitem", tabindex: "-1", onclick: run, ...attrs }, label));
}

/** A <ul role="menu"> named `label` (aria-label), with `attrs` and `items` (menuItem()s; more may be
 *  appended later), that answers the keys above. `close()` must remove the menu and give its
 *  opener the focus: Escape and Tab call it. */
export function menuList(label, close, attrs, ...items) {
  const list = el("ul", { role: "menu", "aria-label": label, ...attrs }, ...items);
  list.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return; // the browser's own shortcuts (Alt+Left: back)
    const shown = [...list.querySelectorAll('[role="menuitem"]')]; // now: a menu may change its items
    const at = shown.indexOf(document.activeElement);
    const to = e.key in STEPS ? (at + STEPS[e.key] + shown.length) % shown.length
      : { Home: 0, End: shown.length - 1 }[e.key];
    if (to !== undefined) {
      e.preventDefault(); // the keys would scroll the page too
      shown[to]?.focus();
    } else if (e.key === "Escape") {
      e.stopPropagation(); // the page's own Escape (it closes the phone's drawer) is not for this one
      close();
    } else if (e.key === "Tab") {
      close(); // the opener has the focus now: the browser's Tab moves on from there
    }
  });
  return list;
}
