"""sentence-transformers models: a transformer, its pooling and normalization, measured contrastively.

A folder (or hub repository) with ``modules.json``, as ``SentenceTransformer.save`` writes it, is a
transformer followed by modules that turn its token states into one sentence embedding. gradscope reads
those modules from their config files and computes them itself: it neither imports sentence_transformers
nor runs code from the folder. It follows

- ``Transformer`` at the folder's root (``path`` ""), an encoder: the Hugging Face model there, loaded with
  ``AutoModel`` as sentence-transformers loads it; ``sentence_bert_config.json`` may cap the tokens
  (``max_seq_length``) and lowercase the text (``do_lower_case``);
- ``Pooling`` (its ``config.json``): ``cls``, ``max``, ``mean``, ``mean_sqrt_len_tokens``, ``weightedmean``,
  ``lasttoken``, over the tokens the attention mask keeps, several concatenated in that order, as
  sentence-transformers does; read from ``pooling_mode`` or the older ``pooling_mode_*`` flags;
- ``Normalize``: the embedding scaled to unit length.

A folder that names another module (``Dense``, ...), holds its transformer in a subfolder, or whose
transformer is an encoder-decoder is not followed: :class:`NotFollowed` says why, and the loader measures
the transformer as a plain Hugging Face model.

The objective, ``multiple-negatives-ranking``, is sentence-transformers' default
``MultipleNegativesRankingLoss`` on sentence pairs (see :func:`gradscope.models.inputs.sentence_halves`):
a batch of B pairs is one forward pass of its B anchors and then its B positives, padded to the longest
(the padding is masked out of attention and pooling); each anchor's cosine similarities to the B positives,
times ``SCALE``, are scored with cross-entropy against its own positive, the other B - 1 being its
negatives. Chance is ln B.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 20.0  # MultipleNegativesRankingLoss's default: cosine similarities times 20 are the logits

# sentence-transformers' pooling modes, in the order it concatenates them, with the older config flag of each
POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}

_FOLLOWED = ("Transformer", "Pooling", "Normalize")


class NotFollowed(Exception):
    """A sentence-transformers folder whose modules gradscope does not compute; the message says why."""


@dataclass(frozen=True)
class SentenceEncoder:
    """How a sentence-transformers model turns its transformer's token states into a sentence embedding."""

    pooling: tuple[str, ...]  # of POOLING_FLAGS' modes, concatenated in that order
    normalize: bool
    max_seq_length: Optional[int] = None
    lowercase: bool = False

    def describe(self) -> str:
        """The embedding in words, e.g. ``mean pooling, normalized``."""
        return f"{' + '.join(self.pooling)} pooling" + (", normalized" if self.normalize else "")

    def embed(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings [n, modes * hidden] from token states [n, tokens, hidden], in float32 or wider."""
        hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
        pooled = torch.cat([_POOL[mode](hidden, attention_mask) for mode in self.pooling], dim=-1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The in-batch contrastive loss of a batch whose first half of rows are anchors and second half their
        positives (see the module docstring)."""
        mask = batch["attention_mask"]
        hidden = model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        anchors, positives = self.embed(hidden, mask).chunk(2)
        return ranking_loss(anchors, positives)


def ranking_loss(anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """MultipleNegativesRankingLoss: cross-entropy over ``SCALE`` x cosine similarity, row i's label i."""
    scores = SCALE * F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).t()
    return F.cross_entropy(scores, torch.arange(len(anchors), device=scores.device))


def _masked_sum(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1), weights.sum(dim=1).clamp(min=1e-9)


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total, count = _masked_sum(hidden, mask)
    return total / count


def _mean_sqrt_len(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total, count = _masked_sum(hidden, mask)
    return total / count.sqrt()


def _weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # token k of a sentence (from 1, padding on either side not counted) weighs k
    weights = (mask.cumsum(dim=1) * mask).unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values


def _at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]


def _cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _at(hidden, mask.int().argmax(dim=1))  # the first kept token (after any left padding)


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _at(hidden, mask.shape[1] - 1 - mask.int().flip(1).argmax(dim=1))  # the last kept token


_POOL = {"cls": _cls, "max": _max, "mean": _mean, "mean_sqrt_len_tokens": _mean_sqrt_len,
         "weightedmean": _weighted_mean, "lasttoken": _last_token}
assert tuple(_POOL) == tuple(POOLING_FLAGS)


# --- reading the folder ---------------------------------------------------------------


def _read_json(spec: str, filename: str):
    """A JSON file of a local folder or hub repository (from the cache when offline), or None if it has none."""
    from transformers.utils import cached_file

    try:
        path = cached_file(spec, filename, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except Exception:  # a gated or missing repository: the model's own loading says why
        return None
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise NotFollowed(f"its {filename} cannot be read ({exc})") from None


def pooling_modes(pooling_config: dict) -> tuple[str, ...]:
    """The pooling modes a ``Pooling`` config names, in sentence-transformers' concatenation order.

    >>> pooling_modes({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    ('cls',)
    >>> pooling_modes({"pooling_mode": ["mean", "max"]})
    ('max', 'mean')
    """
    if "pooling_mode" in pooling_config:
        named = pooling_config["pooling_mode"]
        named = [named] if isinstance(named, str) else list(named)
    else:
        named = [mode for mode, flag in POOLING_FLAGS.items() if pooling_config.get(flag)]
    unknown = [mode for mode in named if mode not in POOLING_FLAGS]
    if unknown:
        raise NotFollowed(f"its pooling mode {unknown[0]!r} is none of {', '.join(POOLING_FLAGS)}")
    if pooling_config.get("include_prompt") is False:
        raise NotFollowed("its pooling leaves out a prompt, which gradscope's sentence pairs do not have")
    return tuple(mode for mode in POOLING_FLAGS if mode in named) or ("mean",)  # sentence-transformers' default


def read_sentence_encoder(spec: str, hf_config) -> Optional[SentenceEncoder]:
    """The :class:`SentenceEncoder` of a sentence-transformers folder or hub id, None where ``spec`` has no
    ``modules.json``; :class:`NotFollowed` where it has modules gradscope does not compute."""
    modules = _read_json(spec, "modules.json")
    if modules is None:
        return None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise NotFollowed("its modules.json is not a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    other = [m.get("type") for m, kind in zip(modules, kinds) if kind not in _FOLLOWED]
    if other:
        raise NotFollowed(f"its modules.json names {other[0]}, which gradscope does not compute")
    if kinds[:1] != ["Transformer"] or kinds.count("Transformer") != 1:
        raise NotFollowed("its modules.json does not start with its one Transformer")
    if modules[0].get("path", ""):
        raise NotFollowed(f"its transformer is in the subfolder {modules[0]['path']}/, which gradscope does not read")
    if getattr(hf_config, "is_encoder_decoder", False):
        raise NotFollowed("its transformer is an encoder-decoder, of which sentence-transformers runs the encoder")
    pools = [m for m, kind in zip(modules, kinds) if kind == "Pooling"]
    if len(pools) != 1:
        raise NotFollowed(f"its modules.json names {len(pools)} Pooling modules, not one")
    pooling_file = f"{pools[0].get('path', '')}/config.json".lstrip("/")
    pooling_config = _read_json(spec, pooling_file)
    if not isinstance(pooling_config, dict):
        raise NotFollowed(f"its Pooling module has no {pooling_file}")
    transformer = _read_json(spec, "sentence_bert_config.json") or {}
    return SentenceEncoder(
        pooling=pooling_modes(pooling_config),
        normalize="Normalize" in kinds[kinds.index("Pooling"):],
        max_seq_length=transformer.get("max_seq_length"),
        lowercase=bool(transformer.get("do_lower_case")),
    )
