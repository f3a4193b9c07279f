"""What a caller said, made comparable: normalisation, phrase matching, spoken digits (pure).

**Normalisation** (``normalise``), in this order:

1. Unicode NFKD, casefold, NFKD again: presentation forms and ligatures become their letters
   (ﻻ → لا), fullwidth and superscript characters their plain ones, Latin is casefolded.
2. Every combining mark is dropped: Arabic harakat, tanwin, shadda, sukun (U+064B–U+065F), the
   dagger alef (U+0670), Quranic marks, and — because NFKD splits them off — the hamza above or
   below and the madda of أ إ آ ؤ ئ (so they become ا ا ا و ي), and Latin accents (é → e).
   Tatweel (U+0640) is dropped too.
3. Letters unified: ٱ → ا; ى → ي; ة → ه (teh marbuta written as heh, the way transcripts
   often spell a final ة; the other way round would turn every final ه into ة); Persian ی → ي,
   ک → ك.
4. Digits of any script (Arabic-Indic ٠–٩, Persian ۰–۹, …) become ASCII 0–9, and a run of
   digits is its own word ("٣أرقام" → "3 ارقام").
5. Punctuation, symbols and control characters (incl. Arabic ، ؛ ؟ ٪ ٫ ٬) become spaces;
   spaces are collapsed and trimmed.

``normalise(normalise(x)) == normalise(x)``.

**Matching** (``match_option``): an option matches when one of its phrases occurs in the
transcript as whole words (a phrase of several words as a contiguous run of words), both sides
normalised. Words are compared without a leading definite article: ال, and وال فال بال كال لل
(the article after a conjunction or preposition) are ignored when at least two letters remain,
so "مواعيد", "المواعيد" and "بالمواعيد" are one word. The longest matching phrase (in words)
wins; two options tying for it is no match. Only when no phrase matched, the option's own key
said as a digit ("اثنين", "two", "٢", "2") chooses it — and only if the transcript names exactly
one option key that way (a digit word met in passing, "موعد الساعة اثنين", loses to a phrase).
"oh" is not zero here (it is in ``spoken_digits``).

**Spoken digits** (``spoken_digits``): every word that is a digit word (Arabic, with the usual
spellings and dialect forms, "و" + a digit word as in "ثلاثة واربعة"; English) or a run of
digits of any script contributes its digits, in order; other words are ignored. Compound
numbers ("عشرين", "twenty", "مية", "hundred", "double five") are out of scope: they are ignored
like any other word, so the gather's ``num_digits``/``pattern`` check is what rejects them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

__all__ = [
    "DIGIT_WORDS",
    "digit_word",
    "match_option",
    "normalise",
    "phrase_key",
    "spoken_digits",
]

_TATWEEL = "\u0640"
_LETTERS = str.maketrans(
    {
        "\u0671": "\u0627",  # ٱ alef wasla → ا
        "\u0649": "\u064a",  # ى alef maksura → ي
        "\u0629": "\u0647",  # ة teh marbuta → ه
        "\u06cc": "\u064a",  # ی Farsi yeh → ي
        "\u06a9": "\u0643",  # ک keheh → ك
        "\u06d5": "\u0647",  # ە ae → ه
    }
)
_DIGIT_RUN = re.compile(r"(?<=[0-9])(?=[^0-9 ])|(?<=[^0-9 ])(?=[0-9])")
_ARTICLES = ("وال", "فال", "بال", "كال", "لل", "ال")
_CONJUNCTION = "و"

_DIGIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "0": ("صفر", "زيرو", "zero"),
    "1": ("واحد", "واحدة", "one"),
    "2": ("اثنين", "اثنان", "إثنين", "اثنتين", "اتنين", "إتنين", "تنين", "ثنين", "two"),
    "3": ("ثلاثة", "ثلاث", "ثلاثه", "تلاتة", "تلاته", "تلات", "three"),
    "4": ("أربعة", "اربعة", "أربع", "اربع", "four"),
    "5": ("خمسة", "خمس", "five"),
    "6": ("ستة", "سته", "ست", "six"),
    "7": ("سبعة", "سبع", "seven"),
    "8": ("ثمانية", "ثماني", "ثمان", "تمانية", "تماني", "تمان", "eight"),
    "9": ("تسعة", "تسع", "nine"),
}
"""Each digit's words as people write (and transcribers spell) them."""
_ZERO_IN_NUMBERS = ("oh",)
"""Words that are a digit in a string of digits ("four oh two") but not on their own."""


def normalise(text: str) -> str:
    """``text`` made comparable (see the module's docstring): lower-case Latin, bare Arabic
    letters, ASCII digits, words separated by single spaces."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    out: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "M" or ch == _TATWEEL:
            continue
        if category == "Nd":
            out.append(str(unicodedata.decimal(ch)))
        elif category[0] in "PSZC":
            out.append(" ")
        else:
            out.append(ch)
    joined = "".join(out).translate(_LETTERS)
    return " ".join(_DIGIT_RUN.sub(" ", joined).split())


def _word_key(word: str) -> str:
    """A normalised word without its definite article (when two letters or more remain)."""
    for article in _ARTICLES:
        if word.startswith(article) and len(word) - len(article) >= 2:
            return word[len(article) :]
    return word


def phrase_key(phrase: str) -> tuple[str, ...]:
    """The words a phrase is compared by: normalised, without definite articles. ``()`` when
    nothing is left (a phrase of punctuation or diacritics only)."""
    return tuple(_word_key(word) for word in normalise(phrase).split())


DIGIT_WORDS: dict[str, str] = {
    normalise(word): digit for digit, words in _DIGIT_SPELLINGS.items() for word in words
}
"""Normalised digit word → the digit it says (the words ``match_option`` accepts for a key)."""
_NUMBER_WORDS = DIGIT_WORDS | {word: "0" for word in _ZERO_IN_NUMBERS}


def digit_word(word: str, *, in_number: bool = False) -> str | None:
    """The digit one normalised word says ("اثنين" → "2"), also after the conjunction و
    ("واربعه" → "4"); ``None`` for any other word. ``in_number`` also reads "oh" as zero."""
    words = _NUMBER_WORDS if in_number else DIGIT_WORDS
    found = words.get(word)
    if found is None and word.startswith(_CONJUNCTION):
        found = words.get(word[len(_CONJUNCTION) :])
    return found


def spoken_digits(transcript: str) -> str:
    """The digits said in ``transcript``, in order: digit words and digits of any script
    ("١٢٣ 4 five" → "12345"); every other word is ignored ("" when none)."""
    out: list[str] = []
    for word in normalise(transcript).split():
        if word.isascii() and word.isdigit():
            out.append(word)
        else:
            digit = digit_word(word, in_number=True)
            if digit is not None:
                out.append(digit)
    return "".join(out)


def _contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    size = len(phrase)
    return any(tuple(words[i : i + size]) == tuple(phrase) for i in range(len(words) - size + 1))


def match_option(transcript: str, options: Mapping[str, Sequence[str]]) -> str | None:
    """The key of the option ``transcript`` names (``options``: key → its phrases), or None.

    The longest phrase found (in words) wins; a tie between options is no match. When no phrase
    is found, a key said as a digit word or digit chooses its option, if exactly one key is said.
    """
    words = phrase_key(transcript)
    best: dict[str, int] = {}
    for key, phrases in options.items():
        for phrase in phrases:
            wanted = phrase_key(phrase)
            if wanted and _contains(words, wanted):
                best[key] = max(best.get(key, 0), len(wanted))
    if best:
        longest = max(best.values())
        winners = [key for key, size in best.items() if size == longest]
        return winners[0] if len(winners) == 1 else None
    said = set()
    for word in normalise(transcript).split():
        digits = word if word.isascii() and word.isdigit() else digit_word(word)
        if digits is not None:
            said.add(digits)
    keys = said & set(options)
    return keys.pop() if len(keys) == 1 else None
