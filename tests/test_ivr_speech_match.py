"""Speech matching: normalisation, phrases, spoken digits (``bridge.ivr.speech_match``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ivr.speech_match import (
    DIGIT_WORDS,
    digit_word,
    match_option,
    normalise,
    phrase_key,
    spoken_digits,
)

CLINIC = {
    "1": ["موعدي", "موعد", "حجز", "appointment", "booking"],
    "2": ["المواعيد", "أوقات الدوام", "ساعات العمل", "opening hours", "hours"],
    "3": ["إنجليزي", "الإنجليزية", "English"],
    "0": ["الاستقبال", "موظف", "reception"],
}

# --- normalise --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("أوقاتُ الدوامِ؟", "اوقات الدوام", id="harakat-and-question-mark"),
        pytest.param("مــــواعيد", "مواعيد", id="tatweel"),
        pytest.param("السّلامُ عليكمْ", "السلام عليكم", id="shadda-sukun"),
        pytest.param("أ إ آ ٱ ا", "ا ا ا ا ا", id="alef-forms"),
        pytest.param("مستشفى", "مستشفي", id="alef-maksura-to-yeh"),
        pytest.param("ساعة", "ساعه", id="teh-marbuta-to-heh"),
        pytest.param("مسؤول شئون", "مسوول شيون", id="hamza-on-waw-and-yeh"),
        pytest.param("هذا\u0670", "هذا", id="dagger-alef"),
        pytest.param("ﻻ", "لا", id="presentation-form-ligature"),
        pytest.param("٠١٢٣٤٥٦٧٨٩", "0123456789", id="arabic-indic-digits"),
        pytest.param("۰۱۲۳۴۵۶۷۸۹", "0123456789", id="persian-digits"),
        pytest.param("٣أرقام", "3 ارقام", id="digits-are-their-own-word"),
        pytest.param("Opening HOURS, please!", "opening hours please", id="latin-casefold"),
        pytest.param("Café", "cafe", id="latin-accent"),
        pytest.param("نعم، لا؛ ربما؟", "نعم لا ربما", id="arabic-punctuation"),
        pytest.param("  a \t\n b  ", "a b", id="spaces-collapsed"),
        pytest.param("", "", id="empty"),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once
    assert "  " not in once
    assert once == once.strip()


def test_the_definite_article_does_not_count_in_phrase_keys() -> None:
    assert phrase_key("المواعيد") == phrase_key("مواعيد") == phrase_key("بالمواعيد")
    assert phrase_key("للاستقبال") == phrase_key("الاستقبال")
    assert phrase_key("أوقات الدوام") == ("اوقات", "دوام")
    # too short once the article is gone: kept as it is
    assert phrase_key("اله") == ("اله",)
    assert phrase_key("؟!") == ()


# --- match_option -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transcript", "expected"),
    [
        pytest.param("المواعيد", "2", id="the-acceptance-phrase"),
        pytest.param("أبغى أعرف المواعيد لو سمحت", "2", id="phrase-in-a-sentence"),
        pytest.param("مواعيد", "2", id="without-the-article"),
        pytest.param("المَواعِيدُ", "2", id="with-harakat"),
        pytest.param("What are your opening hours?", "2", id="english"),
        pytest.param("أوقات الدوام", "2", id="two-word-phrase"),
        pytest.param("أوقات العمل", None, id="words-of-two-phrases-are-not-a-phrase"),
        pytest.param("موعدي", "1", id="option-1"),
        pytest.param("I need the reception", "0", id="english-option-0"),
        pytest.param("اثنين", "2", id="the-key-said-in-arabic"),
        pytest.param("إتنين", "2", id="the-key-said-in-dialect"),
        pytest.param("two please", "2", id="the-key-said-in-english"),
        pytest.param("٢", "2", id="the-key-as-an-arabic-digit"),
        pytest.param("صفر", "0", id="zero"),
        pytest.param("oh", None, id="oh-is-not-zero-on-its-own"),
        pytest.param("تسعة", None, id="a-key-that-is-no-option"),
        pytest.param("واحد اثنين", None, id="two-keys-said"),
        pytest.param("موعدي اثنين", "1", id="a-phrase-beats-a-key-word"),
        pytest.param("hours and an appointment", None, id="a-tie-is-no-match"),
        pytest.param("my appointment and opening hours", "2", id="the-longest-phrase-wins"),
        pytest.param("hourss", None, id="whole-words-only"),
        pytest.param("مرحبا", None, id="nothing"),
        pytest.param("", None, id="empty"),
    ],
)
def test_match_option(transcript: str, expected: str | None) -> None:
    assert match_option(transcript, CLINIC) == expected


def test_a_key_without_phrases_is_still_chosen_by_its_digit_word() -> None:
    assert match_option("تسعة", {"9": [], "1": ["موعد"]}) == "9"


WORDS = st.sampled_from(
    ["أريد", "لو", "سمحت", "please", "I", "want", "the", "مرحبا", "يا", "ok", "hmm", "ممكن"]
)
PHRASES = st.sampled_from([p for phrases in CLINIC.values() for p in phrases])


@settings(max_examples=300, deadline=None)
@given(st.lists(WORDS, max_size=6), PHRASES, st.lists(WORDS, max_size=6))
def test_a_phrase_in_filler_words_is_found(
    before: list[str], phrase: str, after: list[str]
) -> None:
    owner = next(key for key, phrases in CLINIC.items() if phrase in phrases)
    transcript = " ".join([*before, phrase, *after])
    assert match_option(transcript, CLINIC) == owner


MARKS = [chr(c) for c in range(0x064B, 0x0660)] + ["\u0670", "\u0640"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(WORDS, PHRASES, st.sampled_from(["اثنين", "two", "٢"])), max_size=6),
    st.data(),
)
def test_diacritics_or_tatweel_anywhere_never_change_a_match(
    words: list[str], data: st.DataObject
) -> None:
    transcript = " ".join(words)
    chars = list(transcript)
    for _ in range(data.draw(st.integers(0, 8))):
        at = data.draw(st.integers(0, len(chars)))
        chars.insert(at, data.draw(st.sampled_from(MARKS)))
    marked = "".join(chars)
    assert match_option(marked, CLINIC) == match_option(transcript, CLINIC)
    assert spoken_digits(marked) == spoken_digits(transcript)


# --- spoken digits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transcript", "expected"),
    [
        pytest.param("١٢٣ 4 five", "12345", id="mixed-scripts-and-words"),
        pytest.param("واحد اتنين تلاتة واربعة خمسه ستة", "123456", id="dialect-and-waw"),
        pytest.param("ثلاثة أربعة ثمانية تسعة صفر سبعة", "348907", id="msa"),
        pytest.param("ثنتين", "", id="unknown-spelling-ignored"),
        pytest.param("four oh two", "402", id="oh-in-a-number"),
        pytest.param("رقمي هو ١٢٣٤٥٦ شكرا", "123456", id="filler-ignored"),
        pytest.param("۱۲۳", "123", id="persian"),
        pytest.param("١٬٢٣٤", "1234", id="arabic-thousands-separator"),
        pytest.param("عشرين", "", id="compound-numbers-ignored"),
        pytest.param("twenty three", "3", id="compound-tens-ignored"),
        pytest.param("مرحبا", "", id="no-digits"),
    ],
)
def test_spoken_digits(transcript: str, expected: str) -> None:
    assert spoken_digits(transcript) == expected


def test_every_digit_has_arabic_and_english_words() -> None:
    for digit in "0123456789":
        words = [w for w, d in DIGIT_WORDS.items() if d == digit]
        assert any(w.isascii() for w in words), digit
        assert any(not w.isascii() for w in words), digit
        assert all(digit_word(w) == digit for w in words)
    assert digit_word("oh") is None
    assert digit_word("oh", in_number=True) == "0"
    assert digit_word("واحد") == "1"  # not و + "احد"


SPELLINGS = {
    "0": ["0", "٠", "۰", "صفر", "zero", "oh"],
    "1": ["1", "١", "۱", "واحد", "one"],
    "2": ["2", "٢", "۲", "اثنين", "اثنان", "إثنين", "تنين", "اتنين", "two"],
    "3": ["3", "٣", "۳", "ثلاثة", "ثلاث", "تلاتة", "three"],
    "4": ["4", "٤", "۴", "أربعة", "اربعة", "four"],
    "5": ["5", "٥", "۵", "خمسة", "five"],
    "6": ["6", "٦", "۶", "ستة", "سته", "six"],
    "7": ["7", "٧", "۷", "سبعة", "seven"],
    "8": ["8", "٨", "۸", "ثمانية", "ثمان", "تمانية", "eight"],
    "9": ["9", "٩", "۹", "تسعة", "nine"],
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("0123456789"), min_size=1, max_size=12), st.data())
def test_digits_written_any_way_round_trip(digits: list[str], data: st.DataObject) -> None:
    parts: list[str] = []
    for digit in digits:
        word = data.draw(st.sampled_from(SPELLINGS[digit]))
        if not word.isdigit() and parts and not parts[-1].isdigit():
            word = data.draw(st.sampled_from(["", "و"])) + word  # "ثلاثة واربعة"
        parts.append(word)
    text = ""
    for part in parts:
        # digits may run together; words need a space or punctuation
        glue = data.draw(st.sampled_from([" ", "، ", ", ", " - "]))
        if part.isdigit() and text[-1:].isdigit():
            glue = data.draw(st.sampled_from(["", " ", glue]))
        text += (glue if text else "") + part
    assert spoken_digits(text) == "".join(digits)
