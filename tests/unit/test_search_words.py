"""Search's pure parts: the words of a text and of a query, the FTS5 expression built from them,
and the rate book of the HTTP API."""

import pytest

from chatserver import protocol
from chatserver.engines.memory import matches
from chatserver.engines.sqlite_search import match_expression
from chatserver.errors import ChatError
from chatserver.rooms.budgets import RateBook


def test_words_are_letters_and_digits_folded_without_diacritics():
    """Punctuation and underscores separate words; case and diacritics are folded away."""
    assert protocol.search_words("Café-Crème naïve O'Brien snake_case x2 ÉTÉ") == [
        "cafe", "creme", "naive", "o", "brien", "snake", "case", "x2", "ete"]
    assert protocol.search_words('"*" OR NEAR( ) -') == ["or", "near"]


def test_a_query_needs_a_word_and_at_most_200_characters():
    """q: a string of 1-200 characters with a letter or digit; else bad_message."""
    assert protocol.require_query({"q": "x" * 200}) == "x" * 200
    for q in (None, 5, "", "x" * 201, "?! -", "___"):
        with pytest.raises(ChatError) as caught:
            protocol.require_query({"q": q})
        assert caught.value.code == "bad_message"


def test_match_expression_quotes_every_word_as_a_prefix_and_names_the_room():
    """The FTS5 query is the room's token and each word quoted (with * but for one of one
    character), AND-ed: no user syntax survives."""
    words = protocol.search_words('build" OR x NEAR(a')
    assert match_expression("#ops", words) == ('room:"x236F7073" AND text:"build"* AND text:"or"* AND text:"x"'
                                               ' AND text:"near"* AND text:"a"')


def test_the_memory_scan_matches_like_the_index():
    """Each query word must start some word of the text."""
    assert matches(["bui", "gre"], "build 42 is GREEN")
    assert not matches(["uild"], "build")
    assert not matches(["build", "red"], "build 42 is green")
    assert matches(["a", "4"], "a build 4 you") and not matches(["a"], "all builds") and not matches(["4"], "42")
    assert matches(["cafe"], "Café au lait")


def test_the_fast_paths_agree_with_the_plain_rules():
    """ASCII texts (folded by lower()) and the sorted lookup give what the plain rules give: NFKD
    and casefold for the words, "some word starts with each query word" for a match."""
    import itertools
    import unicodedata

    def plain_words(text):
        folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
        return protocol._WORD.findall(folded)

    texts = ["Build 42 is GREEN", "a b ab abc b2 _x_ O'Brien", "Ünïcode Straße ǅ ﬁne", "x" * 50 + " xx"]
    for text in texts:
        assert protocol.search_words(text) == plain_words(text)
    for text, query in itertools.product(texts, ["a", "ab", "abc b", "b", "bu gr", "x", "xx", "brien o", "fine"]):
        words = protocol.search_words(query)
        have = plain_words(text)
        expected = all(any(w.startswith(q) if len(q) > 1 else w == q for w in have) for q in words)
        assert matches(words, text) is expected, (text, query)


def test_rate_book_refills_and_says_how_long_to_wait():
    """A key's bucket gives `burst` at once, then one per 1/rate seconds; keys are apart; old keys go first."""
    now = [0.0]
    book = RateBook(2, 0.5, size=2, clock=lambda: now[0])
    assert [book.take("a"), book.take("a")] == [0.0, 0.0]
    assert book.take("a") == pytest.approx(2.0)
    assert book.take("b") == 0.0
    now[0] = 2.0
    assert book.take("a") == 0.0
    book.take("c")  # a third key: the least recently used one ("b") is dropped, and starts full again
    assert [book.take("b"), book.take("b")] == [0.0, 0.0]
