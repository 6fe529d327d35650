"""A KV cache layer that grows in place, for the pooled decoding steps.

transformers' :class:`~transformers.cache_utils.DynamicLayer` concatenates on every update, so each
pooled step re-copied the whole batch's cache: 18% of a 48-row step on a 400-token cache
(SmolLM2-135M, CPU, 1 thread; 697 -> 550 ms a step with this layer, 8 rows 192 -> 170 ms). Here
``keys``/``values`` are views of buffers with :data:`ROOM` spare columns, and a step writes its
columns into them. The values, hence the logits, are bitwise those of the concatenating layer.

The pool also shrinks in these buffers (:func:`keep_rows`): ``index_select`` when a row left
allocated a fresh copy of the whole batch's cache, and the next update a second one to get room
back; on SHAP's HumanEval/0 (SmolLM2-135M, CPU, 1 thread, a warmed process) that was 5.5-8.4 s of
~95 s, in place it is 0.7 s.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from transformers.cache_utils import DynamicLayer

#: Spare columns a buffer gets when it is (re)allocated: one copy every ROOM steps instead of each.
ROOM = 64


class GrowingLayer(DynamicLayer):
    """A dynamic layer whose updates write into spare room.

    Whoever replaces ``keys``/``values`` (rows leaving or joining a pool, a row's cache cut out of
    it) leaves the buffers behind: the next update sees that the tensors are no longer its views
    and copies them into fresh buffers, so the layer stays a plain dynamic layer to every caller.
    """

    views: tuple[Any, Any] | None = None
    buffers: tuple[Any, Any] = ()

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not self.is_initialized or self.keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        n, add = self.keys.shape[-2], key_states.shape[-2]
        ours = self.views is not None and self.views[0] is self.keys and self.views[1] is self.values
        if not ours or n + add > self.buffers[0].shape[-2]:
            self.buffers = (_with_room(self.keys, n + add + ROOM), _with_room(self.values, n + add + ROOM))
        for buf, new in zip(self.buffers, (key_states, value_states)):
            buf[:, :, n : n + add] = new
        self.keys, self.values = self.buffers[0][:, :, : n + add], self.buffers[1][:, :, : n + add]
        self.views = (self.keys, self.values)
        return self.keys, self.values


def pooled(pasts: list[Any], lengths: list[int], width: int) -> Any:
    """One batched cache from one-row caches of the given lengths, left-padded with zeros to ``width``;
    its plain dynamic layers become :class:`GrowingLayer` (other kinds stay as they are).

    One ``torch.cat`` per layer; the first update copies into a buffer with room. (Copying the rows
    straight into such a buffer saved that copy but measured slower under the allocator: the odd
    buffer sizes missed the memory glibc had kept, and each was page-faulted in afresh.)
    """
    return stacked(pasts, lengths, width, _growing_shell)


def stacked(pasts: list[Any], lengths: list[int], width: int, shell: Callable[[Any], Any]) -> Any:
    """The rows' caches concatenated, left-padded with zeros to ``width``, each layer in ``shell(layer)``
    (a copy of the first row's layer whose keys and values are then set)."""
    import torch

    new = copy.copy(pasts[0])
    new.layers = []
    for n, layer in enumerate(pasts[0].layers):
        piece = shell(layer)
        for name in ("keys", "values"):
            rows = [pad_left(getattr(past.layers[n], name), width - m) for past, m in zip(pasts, lengths)]
            setattr(piece, name, torch.cat(rows, dim=0))
        new.layers.append(piece)
    return new


def _growing_shell(layer: Any) -> Any:
    """A :class:`GrowingLayer` copy of a plain dynamic layer (with no buffers yet); other kinds copied as they are."""
    if type(layer) not in (DynamicLayer, GrowingLayer):
        return copy.copy(layer)
    piece = GrowingLayer.__new__(GrowingLayer)
    piece.__dict__.update(layer.__dict__)
    piece.views, piece.buffers = None, ()
    return piece


def keep_rows(cache: Any, keep: list[int]) -> None:
    """Keep only rows ``keep`` (increasing) of a batched cache, in place.

    A growing layer moves the kept rows down inside its own buffers (a row moves only if a row
    before it left); any other layer gets ``index_select`` copies.
    """
    import torch

    idx = None
    for layer in cache.layers:
        ours = isinstance(layer, GrowingLayer) and layer.views is not None and \
            layer.views[0] is layer.keys and layer.views[1] is layer.values
        if not ours:
            if idx is None:
                idx = torch.tensor(keep, dtype=torch.long, device=layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(0, idx), layer.values.index_select(0, idx)
            continue
        n = layer.keys.shape[-2]
        for buf in layer.buffers:
            for j, src in enumerate(keep):
                if src != j:  # src > j: row j was already moved down or has left
                    buf[j, :, :n] = buf[src, :, :n]
        layer.buffers = (layer.buffers[0][: len(keep)], layer.buffers[1][: len(keep)])
        layer.keys, layer.values = layer.buffers[0][:, :, :n], layer.buffers[1][:, :, :n]
        layer.views = (layer.keys, layer.values)


def pad_left(t: Any, n: int) -> Any:
    """Keys or values (batch x heads x time x dim) with ``n`` zero columns in front (masked-out padding)."""
    import torch

    if n <= 0:
        return t
    return torch.cat([t.new_zeros((t.shape[0], t.shape[1], n, t.shape[3])), t], dim=2)


def _with_room(t: Any, size: int) -> Any:
    """A ``size``-column buffer (batch x heads x time x dim) holding ``t`` in its first columns."""
    buf = t.new_empty((t.shape[0], t.shape[1], size, t.shape[3]))
    buf[:, :, : t.shape[2]] = t
    return buf
