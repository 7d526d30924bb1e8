"""Hugging Face models: a hub id or a directory saved with ``save_pretrained``.

The head matches how the model was trained, read from ``config.architectures``
(or, when that is missing, from what the model type supports):

- ``...ForMaskedLM`` / ``...ForPreTraining``: masked LM on seeded masked text (``masked-lm``);
- ``...ForCausalLM`` / ``...LMHeadModel``: next-token prediction on the text (``causal-lm``);
- ``...ForImageClassification``: cross-entropy on a seeded synthetic image batch and seeded labels;
- anything else (a base model such as ``BertModel``, as sentence-transformers ship): the base model
  with a *surrogate* loss that adds no random weights: the last hidden state is scored against the
  model's own input embedding matrix (``logits = h @ E.T``, the tied LM head without its transform),
  cross-entropy at the masked positions for encoders (``surrogate-masked-lm``), or at the next token
  for decoders (``surrogate-causal-lm``).

``trust_remote_code`` is off unless the config asks for it. Hub access follows
transformers and ``HF_HUB_OFFLINE``; a model that cannot be fetched is a
:class:`ModelLoadError` that says how to pass a local directory instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError, UsageError
from . import Subject, offline, resolve_device, resolve_dtype, to_device
from .inputs import (
    load_images,
    mask_tokens,
    random_labels,
    random_token_ids,
    synthetic_images,
    texts_for,
    token_windows,
)

DEFAULT_IMAGE_SIZE = 224


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:  # the hub client logs each retry; gradscope says what failed once, at the end
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:
        pass


def _load_error(spec: str, local: bool, exc: Exception) -> ModelLoadError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if local:
        return ModelLoadError(f"cannot load the Hugging Face model in {spec}: {first}")
    if offline():
        why = "HF_HUB_OFFLINE is set and it is not in the local cache"
    else:
        why = "the Hugging Face hub could not be reached"
    return ModelLoadError(
        f"cannot load model {spec!r}: {why}; download it where the hub is reachable "
        f"(e.g. `huggingface-cli download {spec} --local-dir ./model`) and pass the local directory: "
        "gradscope analyze ./model"
    )


def _objective(config) -> str:
    from transformers.models.auto import modeling_auto as auto

    architectures = list(getattr(config, "architectures", None) or [])
    model_type = config.model_type
    for arch in architectures:
        if arch.endswith(("ForMaskedLM", "ForPreTraining")) and model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            return "masked-lm"
        if arch.endswith(("ForCausalLM", "LMHeadModel")) and model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return "causal-lm"
        if arch.endswith("ForImageClassification"):
            return "cross-entropy"
    if architectures:  # a base model or another task head
        return "surrogate-causal-lm" if _is_decoder(config) else "surrogate-masked-lm"
    if model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked-lm"
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal-lm"
    if model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "cross-entropy"
    return "surrogate-causal-lm" if _is_decoder(config) else "surrogate-masked-lm"


def _is_decoder(config) -> bool:
    from transformers.models.auto import modeling_auto as auto

    return bool(getattr(config, "is_decoder", False)) or (
        config.model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and config.model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _auto_class(objective: str):
    import transformers

    return {
        "masked-lm": transformers.AutoModelForMaskedLM,
        "causal-lm": transformers.AutoModelForCausalLM,
        "cross-entropy": transformers.AutoModelForImageClassification,
    }.get(objective, transformers.AutoModel)


# --- objectives: loss_fn(model, batch) ----------------------------------------------


def _lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    if batch.get("causal"):
        kwargs["use_cache"] = False  # no key/value cache: nothing kept that the gradient does not need
    return model(**kwargs).loss.float()


def _tied_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    embedding = model.get_input_embeddings().weight
    return hidden @ embedding.t()


def _surrogate_masked_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    where = batch["labels"] != -100
    return F.cross_entropy(_tied_logits(model, hidden[where]).float(), batch["labels"][where])


def _surrogate_causal_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    ids = batch["input_ids"]
    hidden = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    logits = _tied_logits(model, hidden[:, :-1]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _image_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = model(pixel_values=batch["pixel_values"]).logits
    return F.cross_entropy(logits.float(), batch["labels"])


_LOSSES = {
    "masked-lm": _lm_loss,
    "causal-lm": _lm_loss,
    "surrogate-masked-lm": _surrogate_masked_loss,
    "surrogate-causal-lm": _surrogate_causal_loss,
    "cross-entropy": _image_loss,
}


# --- batches ------------------------------------------------------------------------


DEFAULT_SEQ_LEN = 128


def _sequence_length(hf_config, asked: Optional[int], progress) -> int:
    """Tokens per sequence: as asked, else 128; never more positions than the model has."""
    positions = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)
    if asked is not None:
        if positions and asked > positions:
            raise UsageError(f"--seq-len {asked} is longer than the model's {positions} positions; "
                             f"use --seq-len {positions} or less")
        return asked
    if positions and positions < DEFAULT_SEQ_LEN:
        progress(f"the model has {positions} positions: sequences of {positions} tokens")
        return positions
    return DEFAULT_SEQ_LEN


def _text_batches(spec: str, hf_config, objective: str, config, progress) -> tuple[list[dict], str]:
    from transformers import AutoTokenizer

    if config.images:
        raise UsageError("--images is for vision models; this is a text model (use --text)")
    n = config.batch_size * config.batches
    seq_len = _sequence_length(hf_config, config.seq_len, progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=config.trust_remote_code)
    except Exception:  # no tokenizer files: fall back to seeded ids, and say so
        tokenizer = None
    if tokenizer is not None and not tokenizer.vocab_size:
        tokenizer = None  # transformers may build an empty tokenizer when the files are missing
    if tokenizer is not None:
        texts, where = texts_for(config.text)
        ids = token_windows(tokenizer, texts, n, seq_len)
        if int(ids.max()) >= hf_config.vocab_size:
            raise ModelLoadError(
                f"the tokenizer in {spec} gives token ids up to {int(ids.max())}, beyond the model's vocabulary "
                f"of {hf_config.vocab_size}; save the tokenizer the model was trained with next to it"
            )
        special = torch.tensor(
            [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
            dtype=torch.bool,
        )
        mask_id = tokenizer.mask_token_id
        inputs = f"{where}, {n} packed sequences of {seq_len} tokens"
    else:
        if config.text:
            raise UsageError(f"--text: {spec} has no tokenizer files to read text with")
        progress("no tokenizer found next to the model: using seeded random token ids")
        ids = random_token_ids(hf_config.vocab_size, n, seq_len, config.seed)
        special = torch.zeros_like(ids, dtype=torch.bool)
        mask_id = None
        inputs = f"seeded random token ids (no tokenizer), {n} x {seq_len}"
    if objective.endswith("masked-lm"):
        if mask_id is None:
            mask_id = getattr(hf_config, "mask_token_id", None) or 0
        ids, labels = mask_tokens(ids, special, mask_id, config.seed)
        inputs += f", {int((labels != -100).sum())} positions masked (seed {config.seed})"
    else:
        labels = ids.clone()
    batches = []
    for b in range(config.batches):
        rows = slice(b * config.batch_size, (b + 1) * config.batch_size)
        batches.append({
            "input_ids": ids[rows],
            "attention_mask": torch.ones_like(ids[rows]),
            "labels": labels[rows],
            "causal": objective == "causal-lm",
        })
    return batches, inputs


def _processed_images(spec: str, config, n: int) -> torch.Tensor:
    """``--images`` through the model's own image processor (saved next to it)."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(spec, trust_remote_code=config.trust_remote_code)
    except Exception:
        raise UsageError(f"--images: {spec} has no image processor saved with it; leave out --images") from None
    return load_images(config.images, n, lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0])


def _image_batches(spec: str, hf_config, config) -> tuple[list[dict], str]:
    if config.text:
        raise UsageError("--text is for text models; this is an image classifier (use --images)")
    n = config.batch_size * config.batches
    if config.images:
        pixels = _processed_images(spec, config, n)
        source = f"{n} images from {config.images} (the model's image processor)"
    else:
        size = config.image_size or getattr(hf_config, "image_size", None) or DEFAULT_IMAGE_SIZE
        channels = getattr(hf_config, "num_channels", 3)
        pixels = synthetic_images(n, channels, size, config.seed)
        source = f"seeded synthetic images {n} x {channels} x {size} x {size}"
    labels = random_labels(n, hf_config.num_labels, config.seed)
    batches = [
        {"pixel_values": pixels[b * config.batch_size:(b + 1) * config.batch_size],
         "labels": labels[b * config.batch_size:(b + 1) * config.batch_size]}
        for b in range(config.batches)
    ]
    return batches, f"{source}, seeded random labels over {hf_config.num_labels} classes"


# --- loading ------------------------------------------------------------------------


def load_hf(spec: str, config, progress: Callable[[str], None], *, local: bool) -> Subject:
    """Load a Hugging Face model, its head per the module docstring, its batches and objective."""
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            f"cannot load {spec!r}: Hugging Face models need transformers; pip install 'gradscope[hf]'"
        ) from None
    _quiet_transformers()
    if local and not (Path(spec) / "config.json").is_file():
        raise ModelLoadError(
            f"{spec} is a directory without config.json: give a directory written by save_pretrained"
        )
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    if local:
        progress(f"loading {spec} (Hugging Face, local directory)")
    elif offline():
        progress(f"loading {spec} from the Hugging Face cache (HF_HUB_OFFLINE is set)")
    else:
        progress(f"loading {spec} from the Hugging Face hub or its cache (offline? pass --offline to skip the hub)")
    try:
        hf_config = transformers.AutoConfig.from_pretrained(spec, trust_remote_code=config.trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"{spec} runs code shipped with the model; if you trust it, pass --trust-remote-code"
            ) from None
        raise _load_error(spec, local, exc) from None
    except (OSError, EnvironmentError) as exc:
        raise _load_error(spec, local, exc) from None

    objective = _objective(hf_config)
    auto_class = _auto_class(objective)
    kwargs = {"trust_remote_code": config.trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model, info = auto_class.from_pretrained(spec, config=hf_config, output_loading_info=True, **kwargs)
    except (OSError, EnvironmentError) as exc:
        raise _load_error(spec, local, exc) from None
    except ValueError as exc:
        raise ModelLoadError(f"cannot load {spec!r} as {auto_class.__name__}: {str(exc).splitlines()[0]}") from None
    missing = list(info.get("missing_keys", []))
    if missing:
        progress(f"{len(missing)} weights not in the checkpoint were initialized at random (e.g. {missing[0]})")
    model = model.to(device)

    def make_scratch() -> nn.Module:
        scratch = auto_class.from_config(hf_config, trust_remote_code=config.trust_remote_code)
        return scratch.to(device=device, dtype=dtype or next(model.parameters()).dtype)

    if objective == "cross-entropy":
        batches, inputs = _image_batches(spec, hf_config, config)
    else:
        batches, inputs = _text_batches(spec, hf_config, objective, config, progress)
    model_dtype = next(model.parameters()).dtype
    return Subject(
        name=spec,
        source="huggingface",
        model=model,
        make_scratch=make_scratch,
        batches=[to_device(b, device, model_dtype) for b in batches],
        loss_fn=_LOSSES[objective],
        objective=objective,
        inputs=inputs,
        meta={
            "architecture": type(model).__name__,
            "model_type": hf_config.model_type,
            "missing_weights": len(missing),
            "transformers": transformers.__version__,
        },
    )
