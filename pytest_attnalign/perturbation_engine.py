"""Regenerating one task's code from perturbed prompts, for perturbation methods outside this package.

SHAP and BERT masking spend their time regenerating code. :class:`PerturbationEngine` gives a new
perturbation method their path (:func:`.regenerate.regenerate`: greedy decoding in the original's
format and budget, each perturbed prompt first checked against the original tokens in one forward
pass, the prompts that diverge decoded together, a near-tie replayed plainly through the tie, so the tokens are those
of plain greedy decoding) and their units, masking and similarity, without their internals.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .methods import AttributionContext
from .methods.perturbation import bleu_distance, mask_words
from .regenerate import regenerate
from .tasks import Task


class PerturbationEngine:
    """Perturb the words of one task's description and regenerate the code its model writes.

    Prompts are task prompts (``task.prompt`` with changes), in the benchmark's completion-mode
    text; the engine puts them in the model's prompt format as the original was.
    """

    def __init__(self, ctx: AttributionContext) -> None:
        self.ctx = ctx
        #: totals over calls: prompts, verified (tokens confirmed by verification passes),
        #: decoded (tokens decoded step by step), fallbacks (near-ties replayed plainly), replayed
        #: (tokens those replays decoded), forced (of those, tokens run in one forced pass)
        self.stats: dict[str, int] = {}

    @property
    def task(self) -> Task:
        return self.ctx.task

    @property
    def original(self) -> str:
        """The completion of the unperturbed prompt (what the study scores and executes)."""
        return self.ctx.generation.completion

    @property
    def words(self) -> list[tuple[int, int]]:
        """The study's word units of the scored region, ``(start, end)`` in ``task.prompt``."""
        return self.ctx.description_words()

    def completions(self, task_prompts: Sequence[str]) -> list[str]:
        """The completion the model writes for each perturbed task prompt (identical prompts run once)."""
        return regenerate(self.ctx, task_prompts, stats=self.stats)

    def masked(self, keep: Sequence[bool]) -> str:
        """The task prompt with the words whose ``keep`` is false deleted (SHAP's masking)."""
        if len(keep) != len(self.words):
            raise ValueError(f"keep has {len(keep)} entries for {len(self.words)} words")
        return mask_words(self.task.prompt, self.words, keep)

    def replaced(self, substitutes: Mapping[int, str]) -> str:
        """The task prompt with word ``i`` replaced by ``substitutes[i]`` (BERT masking replaces one)."""
        text, out, pos = self.task.prompt, [], 0
        for i in sorted(substitutes):
            start, end = self.words[i]
            out += [text[pos:start], substitutes[i]]
            pos = end
        return "".join(out) + text[pos:]

    def distance(self, completion: str) -> float:
        """``1 - BLEU`` of a completion against the original (the built-in methods' score)."""
        return bleu_distance(self.original, completion)
