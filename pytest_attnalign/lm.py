"""A language model the study can use: what every backend provides, so no module asks which it is.

Two backends implement it: local transformers models (:class:`models.LoadedModel`) and
OpenAI-compatible API models (:class:`openai_model.OpenAIModel`). Methods that need weights,
attention or gradients (``Method.needs_internals``) run only where :attr:`LanguageModel.has_internals`
is true and then use the local model's ``model`` and ``tokenizer``; everything else (generation,
the perturbation methods, caching, the record) goes through this interface.

A new backend is a class with these members plus a loader in :data:`models.LOADERS` under a new
``ModelSpec.kind`` that :func:`model_spec.resolve_model` gives its names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from .generation import Generation, Prompt
    from .model_spec import ModelSpec
    from .tasks import Task


@runtime_checkable
class LanguageModel(Protocol):
    """Generates code for tasks and regenerates it from perturbed task prompts."""

    spec: ModelSpec  # the resolved name: ``.name`` for messages, ``.prompt_format`` the default format
    device: str  # where outputs are computed ("cpu", "cuda:0", "api"): recorded, and part of cache keys

    @property
    def identity(self) -> dict[str, str]:
        """Everything that determines the model's outputs (cache keys, report header); same keys for
        every backend, so existing caches keep hitting."""
        ...

    @property
    def unavailable(self) -> bool:
        """True once the model cannot answer any more in this process (its remaining items are not tried)."""
        ...

    @property
    def has_internals(self) -> bool:
        """Whether weights, attention and gradients are reachable (``model``, ``tokenizer``)."""
        ...

    def generate(self, task: Task, fmt: str, max_new_tokens: int | None = None) -> tuple[Prompt, Generation]:
        """One greedy generation for ``task`` in prompt format ``fmt``, cut by the stop rule;
        ``max_new_tokens`` None means the study's budget rule."""
        ...

    def budget_rule(self, fmt: str) -> str:
        """The default token budget (:meth:`generate` with ``max_new_tokens`` None) in words, for the
        record and the report header."""
        ...

    def regenerate(self, task: Task, generation: Generation, task_prompts: Sequence[str], **speed: Any) -> list[str]:
        """The completion (after the stop rule) that :meth:`generate` would give for each perturbed task
        prompt, in ``generation``'s format and budget. ``speed`` holds options of how, never of what:
        a backend ignores those it has no use for."""
        ...
