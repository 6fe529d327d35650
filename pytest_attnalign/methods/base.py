"""What an attribution method is, and the context it works on.

A method maps one generation to scores for units of the task description. Units are character
spans ``(start, end, score)`` in ``task.prompt`` coordinates (the completion-mode prompt), whatever
format the model was prompted in, so results of both formats compare against the same labels.
Methods that share expensive work (the six self-attention views share one forward pass, the four
gradient views their backward passes) share it through :meth:`AttributionContext.memo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import AttnalignError
from ..generation import Generation, Prompt, encode
from ..linemap import LineScores
from ..tasks import Task

Unit = tuple[int, int, float]

CATEGORIES = ("self_attention", "gradient", "perturbation")


class MethodNotApplicable(AttnalignError):
    """The method cannot run on this model (e.g. gradients of an API model): skip, don't fail."""


@dataclass
class AttributionContext:
    """One task's generation, shared by every method run on it."""

    lm: Any  # lm.LanguageModel (methods needing internals get a models.LoadedModel)
    task: Task
    prompt: Prompt
    generation: Generation
    settings: dict[str, Any] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute once per context; how methods share forward and backward passes."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def description_tokens(self) -> list[tuple[int, int, int]]:
        """``(start, end, token_index)`` of the prompt tokens inside the scored region.

        Spans come from the tokenizer's offset mapping (never from searching token strings), are
        clipped to the region and stripped of surrounding whitespace, as the study's wrappers strip
        their token strings (``tests/test_token_units.py``); whitespace-only tokens are not units (no
        word of the description lies in them). Coordinates: ``task.prompt``.
        """
        return self.memo("description_tokens", self._description_tokens)

    def _description_tokens(self) -> list[tuple[int, int, int]]:
        enc = encode(self.lm.tokenizer, self.prompt.text, self.prompt.format, return_offsets_mapping=True)
        if list(enc["input_ids"]) != list(self.generation.prompt_ids):
            raise AttnalignError("tokenizer is not stable on the prompt text; cannot map tokens to characters")
        lo, hi = self.prompt.description
        text, shift = self.prompt.text, self.prompt.task_offset
        out = []
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            a, b = max(a, lo), min(b, hi)
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if a < b:
                out.append((a - shift, b - shift, i))
        return out

    def description_words(self) -> list[tuple[int, int]]:
        """The study's word units of the scored region (:mod:`..words`), in ``task.prompt`` coordinates."""
        from ..words import word_spans

        return self.memo("description_words", lambda: word_spans(self.task.prompt, *self.task.description))


class Method:
    """Base class of attribution methods; third-party ones subclass it (entry-point group
    ``pytest_attnalign.methods``, each entry point naming a Method subclass or instance)."""

    name: str = ""
    #: self_attention, gradient, perturbation or a new one (shown in the summary; a selector of --attn-method)
    category: str = ""
    #: False for methods that need only generations (perturbation): they also run on API models.
    needs_internals: bool = True
    #: Whether the scores depend on how the model decodes (its token budget, the stop rule), as they do
    #: for methods that regenerate from perturbed prompts; their cached results are keyed by both.
    #: False only where the scores are a function of the generated ids alone (attention, gradients).
    decodes: bool = True
    #: Constructor keywords a user may set (``--attn-method-option NAME.KEY=VALUE``); the rest are library-only.
    options: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """Everything besides the model and task that determines the scores (cache key, report);
        by default the values of :attr:`options`, read from attributes of the same names."""
        return {key: getattr(self, key) for key in self.options}

    def attribute(self, ctx: AttributionContext) -> list[Unit]:
        raise NotImplementedError  # abstract

    def memo_key(self, *parts: object) -> str:
        """A :meth:`AttributionContext.memo` key for this method's own computation: named by the class, so
        a subclass that overrides the computation is not served its parent's result from the context."""
        cls = type(self)
        return ":".join([f"{cls.__module__}.{cls.__qualname__}", *map(str, parts)])

    def line_units(self, ctx: AttributionContext) -> list[LineScores] | None:
        """The code-to-words map (:mod:`..linemap`): per line of the completion that holds explained
        steps, its ``[start, end)`` and a score per unit of :meth:`attribute` (same order), the lines
        summing to those scores. ``None``: the method has no per-line view (all but the CODING ones)."""
        return None

    def check_applicable(self, lm: Any) -> None:
        if self.needs_internals and not lm.has_internals:
            raise MethodNotApplicable(f"{self.name} needs model internals; {lm.spec.name} exposes none (an API model): "
                                      "use the perturbation methods (shap, bert_masking) with it")
