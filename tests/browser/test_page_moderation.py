"""Moderation on the chat page in real browsers (Chromium and Firefox): a teacher with an op token
sets the topic, mutes, kicks and bans from the page; the student's page shows each as a line naming
who did it, the topic in the room's header, the time left of a mute where you type, and a kicked or
banned room closed with a Rejoin button. Room modes and class invites: test_page_classroom.py."""

import re

import pytest

from tests.browser.pages import DOWN, END, ENTER, ESCAPE, HOME, LEFT, RIGHT, TAB, UP
from tests.helpers import SECRET, token

pytestmark = pytest.mark.browser

TOPIC = "Exam on Friday at 10"


def member_action(page, nick: str, label: str) -> None:
    """Open `nick`'s menu in the member list and click `label` in it."""
    page.member(nick).click()
    page.xpath(f'//ul[@class="member-menu"]//button[normalize-space()="{label}"]').click()


def moderate(page, nick: str, label: str, reason: str, duration: int | None = None) -> None:
    """From the member menu, `label` ("Mute…", "Kick…", "Ban…") `nick` with `reason` (and `duration`)."""
    member_action(page, nick, label)
    page.wait(lambda: page.visible("mod-dialog"), "the moderation dialog did not open")
    if duration is not None:
        page.js("document.getElementById('mod-duration').value = arguments[0]", str(duration))
    page.find("mod-reason").send_keys(reason)
    page.find("mod-confirm").click()


def menu_labels(page) -> list[str]:
    return page.js("return [...document.querySelectorAll('.member-menu button')].map(b => b.textContent)")


def test_a_teacher_moderates_from_the_page_and_the_student_sees_it(open_page, make_server, connect):
    """The op sets the topic (both headers show it), mutes stud1 (stud1's box says the time left and
    keeps what was typed), kicks stud1 (stud1's room closes with the reason; Rejoin works), then bans
    stud1 (closed again, until when; Rejoin is refused and says why). Only the op has controls."""
    school = make_server(token_secret=SECRET)
    teacher = open_page(f"/?token={token('ann', op=True)}#lobby", on=school)
    student = open_page("/?nick=stud1#lobby", on=school)
    teacher.wait_for_line("stud1 joined")
    assert teacher.visible("op-badge") and not student.visible("op-badge")
    assert not student.visible("settings-button")
    member_action(student, "ann", "Message")  # a student's menu holds no moderation
    student.wait(lambda: student.title() == "Direct messages with ann")
    student.tab("lobby").click()
    student.member("ann").click()
    assert menu_labels(student) == ["Message"]

    teacher.find("settings-button").click()
    teacher.find("topic-input").send_keys(TOPIC)
    teacher.xpath('//form[@id="settings-form"]//button[@type="submit"]').click()
    for page in (teacher, student):
        page.wait_for_line(f"ann set the topic: {TOPIC}")
        page.wait(lambda p=page: p.find("conv-topic").text == TOPIC, "the topic is not in the header")
    late = connect(school.url)  # and `joined.topic` is shown to who comes later
    assert late.join("lobby")["topic"] == TOPIC

    student.message_box().send_keys("can I say something?")
    member_action(teacher, "stud1", "Mute…")
    teacher.wait(lambda: teacher.visible("mod-dialog"))
    assert teacher.find("mod-title").text == "Mute stud1 in lobby"
    teacher.find("mod-cancel").click()  # a second thought: nothing is sent
    moderate(teacher, "stud1", "Mute…", "calm down", 60)
    for page, who in ((teacher, "stud1"), (student, "you")):
        page.wait_for_line(f"ann muted {who} for 1 min: calm down")
    note = student.wait(lambda: student.find("composer-note").text, "no note where the student types")
    assert re.fullmatch(r"You are muted in lobby: (1:00|0:[0-5]\d) left\. You can still read\.", note), note
    assert student.find("send-button").text == "Muted" and not student.find("send-button").is_enabled()
    assert student.value("message-input") == "can I say something?"

    moderate(teacher, "stud1", "Kick…", "spam")
    teacher.wait_for_line("ann kicked stud1: spam")
    student.wait(lambda: student.visible("closed"), "the student's room did not close")
    assert student.find("closed-text").text == "ann kicked you from lobby: spam."
    assert not student.visible("send-form") and "stud1" not in teacher.find("member-list").text
    assert "Rejoining may be refused" in student.find("rejoin-note").text
    assert "stud1 left" not in teacher.lines()  # the kick line said it
    student.find("rejoin").click()
    student.wait_for_line("You are back in the room.")
    student.wait(lambda: student.visible("send-form") and "stud1 (you)" in student.find("member-list").text)
    teacher.wait(lambda: "stud1" in teacher.find("member-list").text, "the teacher does not see stud1 back")

    moderate(teacher, "stud1", "Ban…", "again", 600)
    teacher.wait_for_line("ann banned stud1 for 10 min: again")
    student.wait(lambda: student.visible("closed"), "the ban did not close the room")
    closed = student.find("closed-text").text
    assert closed.startswith("ann banned you from lobby until ") and closed.endswith("(10 min): again.")
    assert re.fullmatch(r"Rejoin \(banned for (10:00|\d:[0-5]\d) more\)", student.find("rejoin").text)
    student.find("rejoin").click()
    student.wait(lambda: student.find("rejoin-note").text.startswith("Could not rejoin: "), "no reason shown")
    assert student.visible("closed")


def test_a_refused_kick_is_said_in_the_room(open_page, make_server, connect):
    """A kick confirmed after its member left is refused by the server (no_such_user), and the page
    says so in the room, naming what could not be done."""
    school = make_server(token_secret=SECRET)
    teacher = open_page(f"/?token={token('ann', op=True)}#lobby", on=school)
    bob = connect(school.url)
    bob.set_nick("bob")
    bob.join("lobby")
    teacher.wait_for_line("bob joined")
    member_action(teacher, "bob", "Kick…")
    teacher.wait(lambda: teacher.visible("mod-dialog"))
    bob.close()
    teacher.wait(lambda: "bob left" in teacher.lines(), "bob never left")
    teacher.find("mod-confirm").click()
    line = teacher.wait(lambda: [t for t in teacher.lines() if t.startswith("Could not kick bob: ")], "no refusal")
    assert len(line) == 1 and teacher.error("send") == ""


def test_the_member_menu_works_with_the_arrow_keys(open_page, make_server, connect):
    """A member's menu is a menu (role menu, its actions menuitems) that works as desktop menus do:
    Enter on a nick opens it with the focus on "Message"; Down/Right and Up/Left move and wrap,
    Home and End jump; Escape closes it and gives the focus back to the nick; Enter on "Kick…"
    opens the kick dialog; Tab closes it and moves on to the next member."""
    school = make_server(token_secret=SECRET)
    teacher = open_page(f"/?token={token('ann', op=True)}#lobby", on=school)
    for nick in ("bob", "cy"):
        peer = connect(school.url)
        peer.set_nick(nick)
        peer.join("lobby")
        teacher.member(nick)
    menu_open = "return !!document.querySelector('.member-menu')"

    def open_menu() -> None:
        """Focus bob's nick (as Tab would) and press Enter."""
        teacher.js("arguments[0].focus()", teacher.member("bob"))
        teacher.press(ENTER)
        teacher.wait_for_focus("Message")

    open_menu()
    assert menu_labels(teacher) == ["Message", "Mute…", "Kick…", "Ban…"]
    assert teacher.roles(".member-menu") == ["menu", ["menuitem"] * 4]
    for key, name in ((DOWN, "Mute…"), (RIGHT, "Kick…"), (LEFT, "Mute…"), (UP, "Message"), (UP, "Ban…"),
                      (DOWN, "Message"), (END, "Ban…"), (HOME, "Message")):
        teacher.press(key)
        teacher.wait_for_focus(name)
    teacher.press(ESCAPE)
    teacher.wait(lambda: not teacher.js(menu_open), "Escape left the menu open")
    teacher.wait_for_focus("bob")
    assert teacher.active().get_attribute("aria-expanded") == "false"

    teacher.press(ENTER)  # the nick has the focus again: Enter opens its menu again
    teacher.wait_for_focus("Message")
    teacher.press(END, UP)
    teacher.wait_for_focus("Kick…")
    teacher.press(ENTER)
    teacher.wait(lambda: teacher.visible("mod-dialog"), "Enter on Kick… did not open the dialog")
    assert teacher.find("mod-title").text == "Kick bob from lobby"
    teacher.find("mod-cancel").click()

    open_menu()
    teacher.press(TAB)
    teacher.wait(lambda: not teacher.js(menu_open), "Tab left the menu open")
    teacher.wait_for_focus("cy")
