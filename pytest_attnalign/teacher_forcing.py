"""Plain decoding's steps over known tokens in one forward pass, bit for bit.

A near-tie replay (:func:`decoding.replay`) must reach the tied step with plain decoding's own KV
cache and logits, and plain decoding computes every generated position in a one-token step. Those
steps run one after another, each bound by reading all the weights (~90 ms on SmolLM2-135M, CPU,
one thread), yet their inputs are known before the replay starts: every token before the tie was a
safe argmax, so it is plain decoding's token. :func:`forced_steps` runs them as one pass whose
arithmetic per position is a one-token step's:

- every linear layer over ``n`` positions is ``n`` one-row products (``torch.bmm`` of 1-row
  matrices against the shared weight), not one ``n``-row product: a BLAS product's rounding depends
  on how many rows it has (``F.linear`` of 40 rows differs from 40 one-row calls in the last bits;
  one-row ``bmm`` matches them exactly);
- attention runs position by position with the model's own eager function over exactly the keys a
  step would see (softmax sums round differently over a longer, masked row);
- norms, activations and rotary embeddings work per element or per position anyway.

That is ~3x cheaper than the steps (one pass reads the weights once; the products run from
cache), but it holds only where the kernels behave as above, so :func:`exact` checks it once per
model against real plain steps, keys, values and logits compared bit for bit, and replays fall back
to plain steps wherever it fails (other architectures, devices or libraries).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .forward import cache_of, reference_attention, step

#: The attention implementation name under which :func:`_rows_attention` is registered.
ROWS_ATTENTION = "attnalign_rows"

#: Prompt and forced tokens of the :func:`exact` check.
CHECK_PROMPT, CHECK_STEPS = 24, 12


def forced_steps(model: Any, known: Sequence[int], past: Any) -> Any:
    """The model output (logits at the last position, the cache) after feeding ``known`` to ``past`` as
    plain decoding's one-token steps would; ``past`` is plain decoding's cache and grows in place."""
    import torch

    ids = torch.tensor([list(known)], device=_device(model))
    with _rows(model):
        return step(model, ids, past)


def exact(model: Any) -> bool:
    """Whether :func:`forced_steps` reproduces plain one-token steps bit for bit on this model (checked once).

    The check decodes a fixed pseudo-random prompt plainly for :data:`CHECK_STEPS` steps, forces the
    same tokens in one pass, and compares every layer's keys and values and the last logits exactly.
    """
    got = getattr(model, "_attnalign_forced_exact", None)
    if got is None:
        try:
            got = _check(model)
        except Exception:  # an architecture the rows mode cannot run (noted as unsupported, never fatal)
            got = False
        model._attnalign_forced_exact = got
    return got


def _check(model: Any) -> bool:
    import torch

    vocab = int(model.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(vocab, 4096), (1, CHECK_PROMPT), generator=gen).to(_device(model))
    with torch.no_grad(), reference_attention(model):
        res = step(model, prompt, None)
        past = cache_of(res)
        fed: list[int] = []
        for _ in range(CHECK_STEPS):
            fed.append(int(res.logits[0, -1].argmax()))
            res = step(model, torch.tensor([[fed[-1]]], device=prompt.device), past)
            past = cache_of(res)
        forced_past = cache_of(step(model, prompt, None))
        forced = forced_steps(model, fed, forced_past)
        return (torch.equal(forced.logits[0, -1], res.logits[0, -1])
                and _same_cache(cache_of(forced), past))


def _same_cache(a: Any, b: Any) -> bool:
    import torch

    la, lb = getattr(a, "layers", None), getattr(b, "layers", None)
    if not la or not lb or len(la) != len(lb):
        return False
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(la, lb))


def _device(model: Any) -> Any:
    return next(model.parameters()).device


@contextmanager
def _rows(model: Any) -> Iterator[None]:
    """Run the block with one-row linear products and position-by-position eager attention."""
    _register()
    current = model.config._attn_implementation
    model.set_attn_implementation(ROWS_ATTENTION)
    try:
        with _row_products():
            yield
    finally:
        model.set_attn_implementation(current)


def _row_products() -> Any:
    """A torch function mode that computes ``F.linear`` and ``torch.addmm`` (GPT-2's ``Conv1D``)
    over several rows as one-row products, each rounded as a one-token step rounds it."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class RowProducts(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func is F.linear and args[0].numel() > args[0].shape[-1]:
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return _one_row_products(args[0], args[1].t(), bias)
            if func is torch.addmm and len(args) == 3 and not kwargs and args[1].dim() == 2 and args[1].shape[0] > 1:
                return _one_row_products(args[1], args[2], args[0])
            return func(*args, **kwargs)

    return RowProducts()


def _one_row_products(x: Any, w_t: Any, bias: Any) -> Any:
    """``x @ w_t (+ bias)`` as one one-row product per row of ``x`` (see the module docstring)."""
    import torch

    rows = x.reshape(-1, 1, x.shape[-1])
    n = rows.shape[0]
    weight = w_t.unsqueeze(0).expand(n, -1, -1)
    if bias is None:
        y = torch.bmm(rows, weight)
    else:
        y = torch.baddbmm(bias.reshape(1, 1, -1).expand(n, 1, -1), rows, weight)
    return y.reshape(*x.shape[:-1], w_t.shape[-1])


def _rows_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> tuple[Any, None]:
    """The model's own eager attention, one query position at a time over the keys up to it."""
    import torch

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
    n, width = query.shape[2], key.shape[2]
    outs = []
    for i in range(n):
        seen = width - n + i + 1
        mask = None if attention_mask is None else attention_mask[:, :, i : i + 1, :seen]
        out, _ = eager(module, query[:, :, i : i + 1], key[:, :, :seen], value[:, :, :seen], mask, **kwargs)
        outs.append(out)
    return torch.cat(outs, dim=1), None


def _register() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ROWS_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(ROWS_ATTENTION, _rows_attention)
