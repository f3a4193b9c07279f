"""split_text: sentence-boundary requests of at most 2000 characters."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sentences import split_text

AR = "مرحبا بك في خدمة همسة. كيف يمكنني مساعدتك اليوم؟ "


def test_short_text_is_one_request() -> None:
    assert split_text("مرحبا بك في خدمة همسة.") == ["مرحبا بك في خدمة همسة."]


def test_splits_at_arabic_sentence_ends() -> None:
    text = "هذه جملة أولى طويلة بما يكفي للوقوف وحدها. وهذه جملة ثانية طويلة أيضا بما يكفي؟"
    assert split_text(text) == [
        "هذه جملة أولى طويلة بما يكفي للوقوف وحدها.",
        "وهذه جملة ثانية طويلة أيضا بما يكفي؟",
    ]


def test_very_short_sentences_are_merged() -> None:
    parts = split_text("نعم. لا. ربما. هذه جملة طويلة بما يكفي للوقوف وحدها تماما.")
    assert parts == ["نعم. لا. ربما. هذه جملة طويلة بما يكفي للوقوف وحدها تماما."]


def test_text_over_2000_characters_is_split_and_nothing_lost() -> None:
    text = AR * 60
    parts = split_text(text)
    assert len(parts) > 1
    assert all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_a_single_sentence_over_the_limit_is_cut_at_clauses_or_words() -> None:
    text = "، ".join(["كلمة"] * 700) + "."
    parts = split_text(text)
    assert all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_empty_text_gives_no_requests() -> None:
    assert split_text("   ") == []


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ابتثج كلمن.؟،!,a ")), max_size=5000),
    st.integers(50, 2000),
)
def test_any_text_pieces_fit_and_keep_every_word(text: str, max_chars: int) -> None:
    parts = split_text(text, max_chars=max_chars)
    assert all(0 < len(p) <= max_chars for p in parts)
    assert "".join(" ".join(parts).split()) == "".join(text.split())
