"""The study's word units for the perturbation methods: NLTK word tokens of the task description.

The study's code split the description with ``nltk.word_tokenize`` (identifiers, numbers and words
separated from punctuation) and, for BERT masking, dropped the tokens made only of punctuation. A
whitespace chunk such as ``List[float],`` would instead cover several labelled words with one top-K
slot. ``word_tokenize`` is Punkt sentence splitting followed by ``NLTKWordTokenizer`` on each
sentence; its trained English Punkt model is a data download, which a run must never need, so the
sentences come from an untrained ``PunktSentenceTokenizer`` (no data). The words are the same as
``word_tokenize``'s with the trained model on all 1,138 descriptions (``tests/test_words.py``); they would
differ at an abbreviation the trained model knows (``Mr.``), which no description has.
Newlines count as spaces, as in the study (``text.replace('\\n', ' ')``).
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import Any

PUNCTUATION = frozenset(string.punctuation)
WORD_UNITS = "nltk word tokens (untrained Punkt sentences + NLTKWordTokenizer), punctuation-only tokens dropped"


@lru_cache(maxsize=1)
def _tokenizers() -> tuple[Any, Any]:
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def is_punctuation(token: str) -> bool:
    """The study's ``check_if_punctuation``: every character is ASCII punctuation."""
    return bool(token) and all(c in PUNCTUATION for c in token)


def word_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Half-open spans (offsets into ``text``) of the word tokens of ``text[start:end]``, in order."""
    end = len(text) if end is None else end
    region = text[start:end].replace("\n", " ")
    sentences, words = _tokenizers()
    out = []
    for a, b in sentences.span_tokenize(region):
        for s, e in words.span_tokenize(region[a:b]):
            if not is_punctuation(region[a + s : a + e]):
                out.append((start + a + s, start + a + e))
    return out
