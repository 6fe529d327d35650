"""Integrated gradients (captum) as a pytest-attnalign method: the example of a third-party package.

Installed, its entry point (group ``pytest_attnalign.methods``) adds the method ``ig_reading``:
``pytest --attn-method=ig_reading --attn-method-option ig_reading.n_steps=8``. The module imports
torch and captum only inside :meth:`IntegratedGradientsReading.attribute`, so resolving method names
stays cheap.
"""

from __future__ import annotations

from typing import Any

from pytest_attnalign.errors import AttnalignError
from pytest_attnalign.methods import AttributionContext, Method, Unit


class IntegratedGradientsReading(Method):
    """IG of ``log p(first body token | prefix)`` w.r.t. the input embeddings; unit score = the L2
    norm over the embedding dimension (as the built-in gradient methods). The baseline is the input
    with the scored region's token embeddings zeroed, so the path changes only the description."""

    category = "gradient"
    options = ("n_steps",)

    def __init__(self, n_steps: int = 16) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        self.n_steps = n_steps

    def settings(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps, "target": "log_prob of the first body token", "wrt": "inputs_embeds",
                "baseline": "scored tokens' embeddings zeroed", "norm": "l2"}

    def attribute(self, ctx: AttributionContext) -> list[Unit]:
        import torch
        from captum.attr import IntegratedGradients

        gen, model = ctx.generation, ctx.lm.model
        first, end = gen.explained
        if end <= first:
            raise AttnalignError("the model generated no code: ig_reading has no token to explain")
        ids = torch.tensor([[*gen.prompt_ids, *gen.generated_ids[:first]]], device=ctx.lm.device)
        target = gen.generated_ids[first]  # step j is predicted at position P - 1 + j: the last input position
        cols = ctx.description_tokens()
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
        baseline = embeds.clone()
        baseline[0, [i for _, _, i in cols]] = 0

        def log_prob(x: Any) -> Any:
            logits = model(inputs_embeds=x, use_cache=False).logits[:, -1].float()
            return torch.log_softmax(logits, dim=-1)[:, target]

        attributions = IntegratedGradients(log_prob).attribute(embeds, baselines=baseline, n_steps=self.n_steps,
                                                               internal_batch_size=self.n_steps)
        norms = attributions[0].float().norm(dim=-1)
        return [(s, e, float(norms[i])) for s, e, i in cols]
