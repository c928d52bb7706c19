"""Arabic text normalised for search and scoring.

Written Arabic varies in ways that do not change the word: diacritics (harakat) are usually
left out, tatweel stretches letters for layout, hamza forms of alef are written loosely, and
final ya/alef maqsura and ta marbuta/ha are swapped in everyday typing and in Whisper's output.
A search for a name must find it however either side wrote it, and a word error rate must not
count a missing kasra as a wrong word, so both use this one normaliser.
"""

from __future__ import annotations

import re
import unicodedata

#: Harakat, tanwin, shadda, sukun, superscript alef and Quranic marks (U+0610-061A,
#: U+064B-065F, U+0670, U+06D6-06ED).
_DIACRITICS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]")
_TATWEEL = "\u0640"
_LETTERS = str.maketrans(
    {
        "\u0622": "\u0627",  # alef with madda -> alef
        "\u0623": "\u0627",  # alef with hamza above -> alef
        "\u0625": "\u0627",  # alef with hamza below -> alef
        "\u0671": "\u0627",  # alef wasla -> alef
        "\u0649": "\u064a",  # alef maqsura -> ya
        "\u0629": "\u0647",  # ta marbuta -> ha
        _TATWEEL: None,
    }
)
#: Anything that is not a letter or digit in any script separates words (Arabic comma and
#: question mark included), so punctuation never glues to a word.
_SEPARATORS = re.compile(r"[^\w]+|_")


def normalise(text: str) -> str:
    """Lower-cased, diacritic-free, letter-unified words separated by single spaces."""
    folded = unicodedata.normalize("NFKC", text).lower()
    folded = _DIACRITICS.sub("", folded).translate(_LETTERS)
    return " ".join(_SEPARATORS.sub(" ", folded).split())
