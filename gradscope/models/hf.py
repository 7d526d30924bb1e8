"""Hugging Face models: a hub id or a directory saved with ``save_pretrained``.

The head matches how the model was trained, read from ``config.architectures``
(or, when that is missing, from what the model type supports):

- ``...ForMaskedLM`` / ``...ForPreTraining``: masked LM on seeded masked text (``masked-lm``); ELECTRA's
  and Funnel's ``...ForPreTraining`` are discriminators: 15% of the tokens replaced by seeded random
  ones, each token scored replaced or not (``replaced-token-detection``);
- ``...ForCausalLM`` / ``...LMHeadModel``: next-token prediction on the text (``causal-lm``);
- ``...ForConditionalGeneration`` of an encoder-decoder (T5, BART, ...), or its base model: the decoder
  writes the input text back, teacher-forced, with the encoder's input masked where the tokenizer has a
  mask token (BART's denoising) (``seq2seq-lm``);
- ``...ForSequenceClassification``: the classifier kept, cross-entropy on the text against seeded
  random labels in ``range(num_labels)`` (``cross-entropy``); with one label, a regression head,
  mean squared error against seeded standard-normal targets (``mean-squared-error``); with
  ``problem_type="multi_label_classification"``, binary cross-entropy against seeded 0/1 labels
  per class (``binary-cross-entropy``);
- ``...ForTokenClassification``: the same per token, special tokens unlabelled (``cross-entropy``);
- ``...ForImageClassification``: cross-entropy on a seeded synthetic image batch and seeded labels; a
  vision backbone without that head (``Dinov2Model``, ``ViTModel``) gets a fresh one, said in
  ``meta["objective_note"]``;
- audio and text-and-image models (Whisper, wav2vec 2.0, CLIP, LLaVA), and models with neither a
  vocabulary nor an image-classification head: refused in one line (measure them from Python with
  your own batch);
- a sentence-transformers model (``modules.json``): its transformer with the folder's pooling and
  normalization, computed by gradscope from their config files, and the in-batch contrastive loss it was
  trained with on sentence pairs (``multiple-negatives-ranking``, see :mod:`.sentence`); a folder whose
  modules gradscope does not compute is measured as the model below, and the note says why;
- anything else (a base model such as ``BertModel``, or a head gradscope has no objective for): the base
  model with a *surrogate* loss that adds no random weights: the last hidden state is scored against the
  model's own input embedding matrix (``logits = h @ E.T``, the tied LM head without its transform),
  cross-entropy at the masked positions for encoders (``surrogate-masked-lm``), or at the next token for
  decoders (``surrogate-causal-lm``). A progress line and ``meta["objective_note"]`` say so.

For the surrogate and the contrastive objectives, ``meta["chance"]`` holds the loss of a uniform guess
(``loss``) and what it guesses among (``basis``): a pretrained model at or above it does not do what the
objective asks (see :func:`gradscope.analysis.chance_finding`).

A directory holding a PEFT adapter (``adapter_config.json``, no model weights) is the base model
it names with the adapter merged into its weights, with the head of the adapter's task type
(``SEQ_CLS``, ``TOKEN_CLS``, ``CAUSAL_LM``; its saved classifier included; a ``config.json`` saved
beside the adapter describes the head), read by the adapter's tokenizer if it was saved with one,
else the base model's (``meta["adapter"]``).

Text is read with the model's tokenizer. Without one (transformers may make up a tokenizer of
special tokens only when no tokenizer files were saved), or when it reads the text as mostly
unknown tokens, the batch is seeded random token ids, and the inputs line says why.

``trust_remote_code`` is off unless :attr:`LoadOptions.trust_remote_code` (``AnalyzeConfig.trust_remote_code``,
``--trust-remote-code``) asks for it, whatever the model's files say. Hub access follows
transformers and ``HF_HUB_OFFLINE``; a model that cannot be fetched is a
:class:`ModelLoadError` that says how to pass a local directory instead.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError, UsageError
from ..limits import check_model_size
from .common import LoadOptions, LossFn, Subject, is_local_path, offline, resolve_device, resolve_dtype, to_device
from .failures import needs_code_message, pickled_global, short_reason
from .inputs import (
    PAIRING,
    load_images,
    mask_tokens,
    pair_batches,
    random_labels,
    random_targets,
    random_token_ids,
    refuse_image_options,
    refuse_text_options,
    sentence_halves,
    synthetic_images,
    texts_for,
    token_windows,
    unknown_fraction,
)
from .sentence import SCALE, NotFollowed, SentenceEncoder, read_sentence_encoder

DEFAULT_IMAGE_SIZE = 224


# --- PEFT adapters --------------------------------------------------------------------
#
# A folder written by PeftModel.save_pretrained holds an adapter (LoRA, ...) and
# the name of its base model, not a whole model. gradscope loads the base model
# with the head the adapter was trained for, applies the adapter, merges it into
# the weights, and measures that model: the fine-tuned model as it is used.

# Files that hold a tokenizer or an image processor.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "tokenizer.model", "sentencepiece.bpe.model")
_PREPROCESSOR_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "preprocessor_config.json")

# Files that hold a whole model's weights.
_MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                       "pytorch_model.bin.index.json")

# PEFT task types with a head of their own; others keep the base model's.
_ADAPTER_TASKS = {"SEQ_CLS": "sequence-classification", "TOKEN_CLS": "token-classification",
                  "CAUSAL_LM": "causal-lm"}

# Where a classification head's last layer lives, in the adapter's saved keys.
_HEAD_KEYS = tuple(f"base_model.model.{h}.weight" for h in ("classifier", "score", "classifier.out_proj"))

# Adapters that add virtual tokens instead of changing weights: nothing to merge.
_PROMPT_ADAPTERS = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT")


def _read_adapter(spec: str) -> Optional[dict]:
    """The adapter_config.json of a PEFT adapter folder (no whole model's weights there); else None."""
    folder = Path(spec)
    if any((folder / f).is_file() for f in _MODEL_WEIGHT_FILES):
        return None
    try:
        adapter = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return adapter if isinstance(adapter, dict) else None


def _adapter_base(spec: str, adapter: dict) -> str:
    """The base model the adapter was trained on, after checking that it can be applied here."""
    kind = adapter.get("peft_type") or "PEFT"
    base = adapter.get("base_model_name_or_path")
    merge = (f"or merge it yourself (PeftModel.from_pretrained(base, {str(spec)!r}).merge_and_unload()"
             ".save_pretrained(DIR)) and analyze DIR")
    if kind in _PROMPT_ADAPTERS:
        raise ModelLoadError(f"{spec} holds a {kind} adapter: it adds virtual tokens to the input instead of changing "
                             "weights, so there is nothing to merge and measure; analyze its base model "
                             f"{base or '(base_model_name_or_path)'} instead")
    if not base:
        raise ModelLoadError(f"{spec} holds a {kind} adapter whose adapter_config.json names no base model; set "
                             f"base_model_name_or_path there, {merge}")
    try:
        import peft  # noqa: F401  (only whether it is installed: _merge_adapter uses it)
    except ImportError:
        raise ModelLoadError(f"{spec} holds a {kind} adapter for {base}, not a whole model: install peft "
                             f"(pip install peft) and gradscope merges it into its base model, {merge}") from None
    if not (Path(spec) / "adapter_model.safetensors").is_file():
        raise ModelLoadError(f"{spec} holds a {kind} adapter without adapter_model.safetensors: gradscope reads "
                             "adapter weights from safetensors only; save the adapter again with save_pretrained")
    beside = Path(spec).resolve().parent / base  # a relative path, as written where the adapter was trained
    if not Path(base).exists() and not Path(base).is_absolute() and beside.is_dir():
        return str(beside)
    return base


def _hub_reason(name: str, exc: Exception) -> str:
    """Why a hub id did not load, from the hub client's errors in the chain transformers raised."""
    chain = []
    while exc is not None and len(chain) < 8:
        chain.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    if offline():
        why = "HF_HUB_OFFLINE is set and it is not in the local cache"
    elif "GatedRepoError" in chain:
        why = "it is a gated model: accept its terms on its hub page, then log in with `hf auth login`"
    elif "RepositoryNotFoundError" in chain:
        why = "the Hugging Face hub has no such model, or it is private (check the id; `hf auth login` for yours)"
    else:
        why = "the Hugging Face hub could not be reached"
    first, _, rest = name.partition("/")
    if rest and Path(first).is_dir():  # a typo in a local path reads as an owner/name id
        why += f"; nor is it a local directory: {first}/ has no {rest}"
    return why


def _base_error(spec: str, base: str, local: bool, exc: Exception) -> ModelLoadError:
    """The base model an adapter names cannot be loaded: say where that name comes from and how to fix it."""
    why = f"it cannot be loaded from there ({short_reason(exc)})" if local else _hub_reason(base, exc)
    return ModelLoadError(
        f"cannot load the base model {base!r} that {spec}/adapter_config.json names (base_model_name_or_path): {why}; "
        f"put the base model in a local directory (e.g. `hf download {base} --local-dir ./base`) and "
        "set base_model_name_or_path to it")


def _saved_rows(spec: str, *keys: str) -> Optional[int]:
    """Rows of the first of ``keys`` the adapter saved (read from the safetensors header), or None."""
    from safetensors import safe_open

    with safe_open(str(Path(spec) / "adapter_model.safetensors"), framework="pt") as f:
        saved = set(f.keys())
        key = next((k for k in keys if k in saved), None)
        return int(f.get_slice(key).get_shape()[0]) if key else None


def _adapter_task(spec: str, adapter: dict, hf_config, progress) -> tuple[str, dict]:
    """The head the adapter was trained with, and meta to add. The config gets the head's number of labels."""
    task_type = adapter.get("task_type")
    task = _ADAPTER_TASKS.get(task_type)
    if task is None:
        task = _task(hf_config, spec)
        if task_type in (None, "FEATURE_EXTRACTION") or task.startswith("surrogate"):
            return task, {}  # a backbone adapter, or one the surrogate note explains
        note = (f"the adapter was trained for {task_type}, a head gradscope has no objective for: measured with the "
                f"base model's {task} head; any head weights the adapter saved are not used")
        progress(note)
        return task, {"objective_note": note}
    if task == "causal-lm":
        return task, {}
    labels = _saved_rows(spec, *_HEAD_KEYS)
    if labels:
        hf_config.num_labels = labels
    if task != "sequence-classification":
        return task, {}
    task = _sequence_task(hf_config)
    if task != "sequence-classification" or (Path(spec) / "config.json").is_file():
        return task, {}
    note = ("an adapter does not record problem_type: measured as single-label classification; save the "
            "fine-tuned model's config.json next to the adapter to say otherwise")
    progress(note)
    return task, {"objective_note": note}


def _adapter_saves(adapter: dict, key: str) -> bool:
    """Whether the adapter carries the weight ``key`` of the model itself (a head in its modules_to_save)."""
    return any(m in key.split(".") for m in adapter.get("modules_to_save") or ())


def _resize_for_adapter(model: nn.Module, spec: str) -> None:
    """Token embeddings resized during fine-tuning (added tokens) are saved with the adapter: size the base alike."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    name = next((n for n, m in model.named_modules() if m is embeddings), None)
    rows = _saved_rows(spec, f"base_model.model.{name}.weight") if name else None
    if rows and rows != embeddings.num_embeddings:
        model.resize_token_embeddings(rows)


def _apply_adapter(target: nn.Module, spec: str):
    """PeftModel.from_pretrained on ``target``, and whether adapter weights found no layer of it to load into.

    from_pretrained only warns about that; load_adapter, run again on the same adapter, returns it.
    """
    from peft import PeftModel

    with warnings.catch_warnings():  # the warning and deprecation notes: what matters is checked below
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(target, spec)
        result = peft_model.load_adapter(spec, adapter_name="default")
    shared = ("vblora_vector_bank", "prompt_encoder", ".tinylora_v.")  # never in a checkpoint (as peft filters)
    return peft_model, any(not any(s in k for s in shared) for k in result.missing_keys)


def _mismatch_reason(exc: Exception) -> str:
    """short_reason, with the first "size mismatch for ..." line when the first line only introduces it."""
    reason = short_reason(exc)
    lines = [line.strip() for line in str(exc).splitlines()]
    detail = next((line for line in lines if line.startswith("size mismatch for")), None)
    return f"{reason} {detail}" if detail and reason.endswith(":") else reason


def _merge_adapter(model: nn.Module, spec: str, task: str) -> nn.Module:
    """The base model with the adapter merged into its weights, every parameter trainable again.

    An adapter trained on the backbone alone (AutoModel, as for sentence embeddings) names its
    layers without the head model's prefix (``bert.``): for a task without a head of its own it
    is applied to the backbone. An adapter that matches nothing is an error, never a silent no-op.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    try:
        _resize_for_adapter(model, spec)
        peft_model, unmatched = _apply_adapter(model, spec)
        if unmatched and isinstance(backbone, nn.Module) and task not in _ADAPTER_TASKS.values():
            peft_model.unload()  # take the empty adapter layers out again
            peft_model, unmatched = _apply_adapter(backbone, spec)
        if not unmatched:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peft_model.merge_and_unload()
    except Exception as exc:  # a shape mismatch with the base model, an unsupported layer
        raise ModelLoadError(f"cannot apply the adapter in {spec} to its base model: {_mismatch_reason(exc)}") from None
    if unmatched:
        raise ModelLoadError(f"the adapter in {spec} does not fit its base model: its weights name layers the "
                             "base model does not have (was it trained on another model, or with another head?)")
    return model.requires_grad_(True)  # peft froze the base weights for training the adapter


def _load_error(spec: str, local: bool, exc: Exception) -> ModelLoadError:
    if local:
        weights = [p.name for p in Path(spec).iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
        hint = "" if weights else " (it holds no weights file: save the model with save_pretrained)"
        return ModelLoadError(f"cannot load the Hugging Face model in {spec}: {short_reason(exc)}{hint}")
    return ModelLoadError(
        f"cannot load model {spec!r}: {_hub_reason(spec, exc)}; download it where the hub is reachable "
        f"(e.g. `hf download {spec} --local-dir ./model`) and analyze the local directory, ./model"
    )


def _weights_error(spec: str, local: bool, exc: Exception, load_ignoring_sizes) -> ModelLoadError:
    """One line for weights transformers found but could not read into the model, and what to do."""
    where = f"the Hugging Face model in {spec}" if local else f"model {spec!r}"
    if type(exc).__name__ == "SafetensorError":
        return ModelLoadError(f"cannot load {where}: its .safetensors weights are damaged or truncated "
                              f"({short_reason(exc)}); download or save the model again")
    if isinstance(exc, pickle.UnpicklingError):
        if pickled_global(exc):
            return ModelLoadError(needs_code_message(
                f"the .bin weights of {spec}", exc,
                "if you trust the file, load it in Python and save it again with save_pretrained "
                "(which writes model.safetensors)"))
        return ModelLoadError(f"cannot load {where}: its .bin weights are not a readable torch checkpoint "
                              f"({short_reason(exc)}); download or save the model again")
    if isinstance(exc, RuntimeError) and ("ignore_mismatched_sizes" in str(exc) or "size mismatch" in str(exc)):
        return ModelLoadError(f"cannot load {where}: its weights do not match the sizes in its config.json"
                              f"{_first_mismatch(load_ignoring_sizes)}; save the config with the weights it "
                              "belongs to (save_pretrained writes both)")
    return ModelLoadError(f"cannot load {where}: {type(exc).__name__}: {short_reason(exc)}")


def _first_mismatch(load_ignoring_sizes) -> str:
    """`` (name is [a] in the checkpoint, [b] by the config; N tensors differ)``, or nothing if not found.

    transformers names the tensors only in a log report; loading once more, told to skip them, lists them.
    """
    try:
        _, info = load_ignoring_sizes()
        mismatched = sorted(info["mismatched_keys"], key=lambda row: row[0])
        name, saved, wanted = mismatched[0]
    except Exception:  # best effort: the message stands without an example
        return ""
    return (f" ({name} is {list(saved)} in the checkpoint, {list(wanted)} by the config; "
            f"{len(mismatched)} tensors differ)")


# ...ForPreTraining heads that are not a masked LM: ELECTRA-style discriminators of replaced tokens.
_DISCRIMINATORS = ("electra", "funnel")


def _task(config, spec: str) -> str:
    """What the model was trained to do, read from its config (see the module docstring)."""
    from transformers.models.auto import modeling_auto as auto

    model_type = config.model_type
    architectures = list(getattr(config, "architectures", None) or [])
    if any(arch.endswith("ForImageClassification") for arch in architectures):
        return "image-classification"  # of any model that has one (CLIP's vision tower too)
    modality = _modality(config)
    if modality != "text":
        if modality == "vision" and model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
            return "image-backbone"  # a vision backbone: measured through a fresh classification head
        raise ModelLoadError(_unsupported_message(spec, config, modality))
    if model_type in _DISCRIMINATORS:
        pretraining = ("replaced-token-detection", auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES)
    else:  # BERT's ...ForPreTraining is a masked LM (and next-sentence prediction)
        pretraining = ("masked-lm", auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    heads = (
        (("ForMaskedLM",), "masked-lm", auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
        (("ForPreTraining",), *pretraining),
        (("ForCausalLM", "LMHeadModel"), "causal-lm", auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        (("ForConditionalGeneration",), "seq2seq-lm", auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
        (("ForSequenceClassification",), "sequence-classification",
         auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
        (("ForTokenClassification",), "token-classification", auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES),
    )
    for arch in architectures:
        for suffixes, task, supported in heads:
            if arch.endswith(suffixes) and model_type in supported:
                return _sequence_task(config) if task == "sequence-classification" else task
    if model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES and getattr(config, "is_encoder_decoder", False):
        return "seq2seq-lm"  # an encoder-decoder base (T5Model, BartModel): its LM head is the tied embedding
    if architectures:  # a base model or another task head
        return "surrogate-causal-lm" if _is_decoder(config) else "surrogate-masked-lm"
    if model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked-lm"
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal-lm"
    return "surrogate-causal-lm" if _is_decoder(config) else "surrogate-masked-lm"


def _modality(config) -> Optional[str]:
    """What the model reads: ``text``, ``vision``, ``audio``, ``multimodal``, or None (something else)."""
    from transformers.models.auto import modeling_auto as auto

    model_type = config.model_type
    audio = (auto.MODEL_FOR_CTC_MAPPING_NAMES, auto.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
             auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES, auto.MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES,
             auto.MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES)
    if any(model_type in names for names in audio):
        return "audio"
    if (model_type in auto.MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES
            or model_type in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            or getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None):
        return "multimodal"
    text = (auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    if model_type in auto.MODEL_FOR_IMAGE_MAPPING_NAMES or (
            model_type in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
            and not any(model_type in names for names in text)):
        return "vision"
    return "text" if isinstance(getattr(config, "vocab_size", None), int) else None


def _unsupported_message(spec: str, config, modality: Optional[str]) -> str:
    heads = list(getattr(config, "architectures", None) or [])
    what = f"{heads[0]} ({config.model_type})" if heads else f"a {config.model_type} model"
    why = {
        "audio": "it reads audio, and gradscope builds text and image batches only",
        "multimodal": "it reads text and images together, and gradscope has no objective that feeds both",
        "vision": "gradscope has an objective for image classifiers only",
    }.get(modality, "gradscope has no objective for it and cannot tell what input it reads")
    return (f"cannot analyze {spec}: {what}: {why}; measure it from Python with your own batch and loss, "
            "gradscope.analyze(model, batch=..., loss_fn=...) (a tower of it works too, e.g. model.vision_model)")


def _sequence_task(config) -> str:
    """A sequence head's task. problem_type, when set, decides (as in transformers): a one-label
    multi-label head is not regression."""
    if config.problem_type == "multi_label_classification":
        return "sequence-multi-label"
    return "sequence-regression" if _is_regression(config) else "sequence-classification"


def _is_regression(config) -> bool:
    """A one-output sequence head is trained as regression by transformers (e.g. similarity scores)."""
    return getattr(config, "problem_type", None) == "regression" or config.num_labels == 1


def _pool_at_the_last_token(model: nn.Module) -> None:
    """Decoder sequence classifiers (GPT-2, Llama, ...) read the last token before the first pad token, and
    refuse a batch of several sequences when the config names no pad token. gradscope's batches hold no
    padding, so a pad id that no input holds makes them read the last position, as they were trained to."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = -1


def _is_decoder(config) -> bool:
    from transformers.models.auto import modeling_auto as auto

    return bool(getattr(config, "is_decoder", False)) or (
        config.model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and config.model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _surrogate_note(config) -> str:
    """Why a surrogate loss is measured, in one phrase for the user."""
    heads = [arch for arch in (getattr(config, "architectures", None) or []) if "For" in arch]
    how = "its last hidden state is scored against its own input embeddings, adding no random weights"
    if heads:
        return f"surrogate loss: gradscope has no objective for the {heads[0]} head, so it is left out and {how}"
    return f"surrogate loss: the model has no language-model head, so {how}"


def _chance(candidates: int, what: str) -> dict:
    """``meta["chance"]``: the loss of a uniform guess among ``candidates`` (``what`` they are), and its basis."""
    return {"loss": math.log(candidates), "basis": f"ln {candidates}, a uniform guess among {what}"}


def _sentence_note(encoder: SentenceEncoder, batch_size: int) -> str:
    """The contrastive objective of a sentence-transformers model, in one phrase for the user."""
    return (f"sentence-transformers model: its transformer with the folder's {encoder.describe()}, measured with "
            f"the in-batch contrastive loss it was trained with, on sentence pairs: {PAIRING}, the other positives "
            f"of the batch its negatives; MultipleNegativesRankingLoss: cross-entropy over {SCALE:g} x the cosine "
            f"similarity of each anchor to the {batch_size} positives of its batch")


# --- objectives: loss_fn(model, batch) ----------------------------------------------


def _lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The head's own loss against ``labels``: LM cross-entropy, or a discriminator's per-token binary one."""
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


def _text_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def _sequence_classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(_text_logits(model, batch), batch["labels"])


def _sequence_regression_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.mse_loss(_text_logits(model, batch).squeeze(-1), batch["labels"].float())


def _multi_label_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(_text_logits(model, batch), batch["labels"].float())


def _token_classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits = _text_logits(model, batch)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))  # -100: unlabelled


# task: (the objective the report names, the transformers Auto class that keeps the head, the loss)
_TASKS = {
    "masked-lm": ("masked-lm", "AutoModelForMaskedLM", _lm_loss),
    "causal-lm": ("causal-lm", "AutoModelForCausalLM", _lm_loss),
    "seq2seq-lm": ("seq2seq-lm", "AutoModelForSeq2SeqLM", _lm_loss),
    "replaced-token-detection": ("replaced-token-detection", "AutoModelForPreTraining", _lm_loss),
    "surrogate-masked-lm": ("surrogate-masked-lm", "AutoModel", _surrogate_masked_loss),
    "surrogate-causal-lm": ("surrogate-causal-lm", "AutoModel", _surrogate_causal_loss),
    "sentence-embedding": ("multiple-negatives-ranking", "AutoModel", None),  # the loss: SentenceEncoder.loss
    "image-classification": ("cross-entropy", "AutoModelForImageClassification", _image_loss),
    "image-backbone": ("cross-entropy", "AutoModelForImageClassification", _image_loss),
    "sequence-classification": ("cross-entropy", "AutoModelForSequenceClassification", _sequence_classification_loss),
    "sequence-regression": ("mean-squared-error", "AutoModelForSequenceClassification", _sequence_regression_loss),
    "sequence-multi-label": ("binary-cross-entropy", "AutoModelForSequenceClassification", _multi_label_loss),
    "token-classification": ("cross-entropy", "AutoModelForTokenClassification", _token_classification_loss),
}


# --- batches ------------------------------------------------------------------------


DEFAULT_SEQ_LEN = 128


def _sequence_length(hf_config, asked: Optional[int], progress) -> int:
    """Tokens per sequence: as asked, else 128; never more positions than the model has."""
    positions = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)
    if asked is not None:
        if positions and asked > positions:
            raise UsageError(f"`seq_len={asked}` is longer than the model's {positions} positions; "
                             f"use `seq_len={positions}` or less")
        return asked
    if positions and positions < DEFAULT_SEQ_LEN:
        progress(f"the model has {positions} positions: sequences of {positions} tokens")
        return positions
    return DEFAULT_SEQ_LEN


MAX_UNKNOWN = 0.5  # above this share of [UNK] tokens the text says nothing to the model


def _tokenizer(spec: str, trust_remote_code: bool):
    """(the tokenizer saved with the model, None) or (None, why there is none to read text with)."""
    from transformers import AutoTokenizer  # an optional dependency: imported where a Hugging Face model loads

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except Exception:  # no tokenizer files: the caller falls back to seeded ids, and says so
        return None, "no tokenizer"
    # transformers may build a tokenizer that knows only its special tokens ([PAD], [UNK], [CLS], ...),
    # without tokenizer files or from a vocabulary it could not read: every word would read as [UNK].
    if not tokenizer.vocab_size or len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        # (from the hub, files were found; in a folder, they may be missing)
        saved = not Path(spec).is_dir() or any((Path(spec) / name).is_file() for name in _TOKENIZER_FILES)
        return None, "its tokenizer knows only special tokens" if saved else "no tokenizer"
    return tokenizer, None


def _token_ids(spec: str, hf_config, options: LoadOptions, seq_len: int, progress):
    """``n`` x ``seq_len`` token ids, which of them are special, the mask token id, and the source in words.

    Text is read with the model's tokenizer. Without one, or when it reads the text as mostly unknown
    tokens (a batch of one repeated id, with nothing to mask), the ids are seeded random ids instead.
    """
    n = options.samples
    tokenizer, why = _tokenizer(spec, options.trust_remote_code)
    if tokenizer is None:
        if options.text:
            raise UsageError(f"`text`: {spec} has no tokenizer to read text with ({why}); save the model's "
                             "tokenizer next to it")
        progress(f"{why}: using seeded random token ids")
    else:
        texts, where = texts_for(options.text)
        ids, passes = token_windows(tokenizer, texts, n, seq_len)
        if int(ids.max()) >= hf_config.vocab_size:
            raise ModelLoadError(
                f"the tokenizer in {spec} gives token ids up to {int(ids.max())}, beyond the model's vocabulary "
                f"of {hf_config.vocab_size}; save the tokenizer the model was trained with next to it"
            )
        special = torch.tensor(
            [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
            dtype=torch.bool,
        )
        unknown = unknown_fraction(ids, special, tokenizer.unk_token_id)
        if unknown > MAX_UNKNOWN:
            why = f"the tokenizer reads {unknown:.0%} of the {where} as unknown tokens"
        elif not bool((~special).any(dim=1).all()):
            why = f"a sequence of the {where} holds only special or unknown tokens"
        else:
            repeated = f" (the text is shorter: repeated {passes:.3g} times)" if passes > 1 else ""
            return ids, special, tokenizer.mask_token_id, f"{where}, {n} packed sequences of {seq_len} tokens{repeated}"
        if options.text:
            raise UsageError(f"`text={options.text!r}`: {why}; give text the model's tokenizer knows, "
                             "or a longer `seq_len`")
        progress(f"{why}: using seeded random token ids")
    ids = random_token_ids(hf_config.vocab_size, n, seq_len, options.seed)
    mask_id = tokenizer.mask_token_id if tokenizer is not None else None
    return ids, torch.zeros_like(ids, dtype=torch.bool), mask_id, f"seeded random token ids ({why}), {n} x {seq_len}"


def _targets(task: str, ids: torch.Tensor, special: torch.Tensor, mask_id: Optional[int], hf_config, seed: int):
    """The task's input ids and labels, and the labels in words (None: the text is its own label)."""
    if task.endswith("masked-lm"):
        if mask_id is None:
            mask_id = getattr(hf_config, "mask_token_id", None) or 0
        ids, labels = mask_tokens(ids, special, mask_id, seed)
        return ids, labels, f"{int((labels != -100).sum())} positions masked (seed {seed})"
    if task == "seq2seq-lm":  # the decoder writes the input text back (BART's denoising, where it has a mask token)
        if mask_id is None:
            return ids, ids.clone(), "the decoder's target is the input text"
        masked, labels = mask_tokens(ids, special, mask_id, seed)
        return masked, ids.clone(), (f"the decoder's target is the input text, {int((labels != -100).sum())} "
                                     f"positions of it masked in the encoder's input (seed {seed})")
    if task == "replaced-token-detection":  # as ELECTRA's generator would, with seeded random replacements
        replaced = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.15) & ~special
        fake = random_token_ids(hf_config.vocab_size, *ids.shape, seed + 1)
        labels = (replaced & (fake != ids)).long()  # a draw of the same token is no replacement
        return (torch.where(replaced, fake, ids), labels,
                f"{int(labels.sum())} tokens replaced by seeded random ones (seed {seed})")
    classes = hf_config.num_labels
    if task == "sequence-classification":
        return ids, random_labels(ids.shape[0], classes, seed), f"seeded random labels over {classes} classes"
    if task == "sequence-regression":
        return ids, random_targets(ids.shape[0], seed), "seeded standard-normal regression targets"
    if task == "sequence-multi-label":
        labels = random_labels(ids.shape[0] * classes, 2, seed).view(ids.shape[0], classes)
        return ids, labels, f"seeded random 0/1 labels for each of {classes} classes"
    if task == "token-classification":
        labels = random_labels(ids.numel(), classes, seed).view_as(ids)
        labels[special] = -100  # as fine-tuning labels words, never [CLS] or [SEP]
        return ids, labels, f"seeded random labels over {classes} classes per token"
    return ids, ids.clone(), None  # causal: the next token


def _text_batches(spec: str, hf_config, task: str, options: LoadOptions, progress) -> tuple[list[dict], str]:
    refuse_image_options(options)
    seq_len = _sequence_length(hf_config, options.seq_len, progress)
    ids, special, mask_id, inputs = _token_ids(spec, hf_config, options, seq_len, progress)
    ids, labels, targets = _targets(task, ids, special, mask_id, hf_config, options.seed)
    if targets:
        inputs += f", {targets}"
    batches = []
    for b in range(options.batches):
        rows = slice(b * options.batch_size, (b + 1) * options.batch_size)
        if not labels.is_floating_point() and not bool((labels[rows] != -100).any()):
            # The loss would be a mean over nothing: NaN, read as a broken model.
            raise UsageError(f"batch {b + 1} has no position to predict (every token is special or unknown); "
                             "give a longer `seq_len` or other `text`")
        batches.append({
            "input_ids": ids[rows],
            "attention_mask": torch.ones_like(ids[rows]),
            "labels": labels[rows],
            "causal": task in ("causal-lm", "seq2seq-lm"),  # no key/value cache
        })
    return batches, inputs


def _sentence_batches(spec: str, hf_config, encoder: SentenceEncoder, options: LoadOptions,
                      progress) -> tuple[list[dict], str]:
    """Batches of sentence pairs for a sentence encoder (see :mod:`.sentence`), and their source in words.

    Each batch's rows are its anchors, then its positives, padded to the longest and truncated at the
    sequence length (and at the model's ``max_seq_length``)."""
    refuse_image_options(options)
    tokenizer, why = _tokenizer(spec, options.trust_remote_code)
    if tokenizer is None:
        raise ModelLoadError(f"{spec} is a sentence-transformers model without a tokenizer to read sentence pairs "
                             f"with ({why}); save its tokenizer next to it")
    if tokenizer.pad_token is None:  # a decoder's tokenizer; the padding is masked out, whatever token it is
        tokenizer.pad_token = tokenizer.eos_token
    max_length = min(_sequence_length(hf_config, options.seq_len, progress), encoder.max_seq_length or math.inf)
    texts, where = texts_for(options.text)
    if encoder.lowercase:
        texts = [text.lower() for text in texts]
    groups, passes = pair_batches(sentence_halves(texts), options.batch_size, options.batches)
    batches, lengths = [], []
    for pairs in groups:
        anchors, positives = zip(*pairs)
        encoded = tokenizer(list(anchors) + list(positives), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        special = torch.tensor([tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                                for row in ids.tolist()], dtype=torch.bool) | (mask == 0)
        unknown = unknown_fraction(ids, special, tokenizer.unk_token_id)
        if unknown > MAX_UNKNOWN:
            raise UsageError(f"the tokenizer of {spec} reads {unknown:.0%} of the {where} as unknown tokens; give "
                             "`text` in a language the model's tokenizer knows")
        batches.append({"input_ids": ids, "attention_mask": mask})
        lengths += mask.sum(dim=1).tolist()
    n = options.samples
    grouped = f" in {options.batches} batches of {options.batch_size}" if options.batches > 1 else ""
    repeated = f" (the text is shorter: repeated {passes:.3g} times)" if passes > 1 else ""
    return batches, (f"{where}, {n} sentence pairs{grouped} (halves of {min(lengths)} to {max(lengths)} tokens, "
                     f"padded to the longest in the batch){repeated}")


def _processed_images(spec: str, options: LoadOptions) -> tuple[torch.Tensor, str]:
    """``images`` through the model's own image processor (saved next to it), and their source in words."""
    from transformers import AutoImageProcessor  # an optional dependency: imported where a Hugging Face model loads

    try:
        processor = AutoImageProcessor.from_pretrained(spec, trust_remote_code=options.trust_remote_code)
    except Exception:
        raise UsageError(f"`images`: {spec} has no image processor saved with it; leave out `images`") from None
    return load_images(options.images, options.samples,
                       lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0],
                       "the model's image processor")


def _image_batches(spec: str, hf_config, options: LoadOptions) -> tuple[list[dict], str]:
    refuse_text_options(options)
    n = options.samples
    if options.images:
        pixels, source = _processed_images(spec, options)
    else:
        size = options.image_size or getattr(hf_config, "image_size", None) or DEFAULT_IMAGE_SIZE
        channels = getattr(hf_config, "num_channels", 3)
        pixels = synthetic_images(n, channels, size, options.seed)
        source = f"seeded synthetic images {n} x {channels} x {size} x {size}"
    labels = random_labels(n, hf_config.num_labels, options.seed)
    per_batch = options.batch_size
    batches = [{"pixel_values": pixels[b * per_batch:(b + 1) * per_batch],
                "labels": labels[b * per_batch:(b + 1) * per_batch]} for b in range(options.batches)]
    return batches, f"{source}, seeded random labels over {hf_config.num_labels} classes"


# --- loading ------------------------------------------------------------------------


_LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers")


def _check_size(spec: str, auto_class, hf_config, dtype, trust_remote_code: bool) -> None:
    """Refuse, before any weight is allocated, a config whose layer count or size this machine cannot analyze
    (a config edited to num_hidden_layers: 1000000 would otherwise grow until memory runs out)."""
    layers = max([v for v in (getattr(hf_config, k, None) for k in _LAYER_FIELDS) if isinstance(v, int)], default=0)
    check_model_size(spec, layers, 0)
    with torch.device("meta"):  # the model's shapes, no memory
        skeleton = auto_class.from_config(hf_config, trust_remote_code=trust_remote_code)
    itemsize = (dtype or torch.float32).itemsize
    check_model_size(spec, layers, sum(p.numel() for p in skeleton.parameters()) * itemsize)


def _import_transformers(spec: str):
    """transformers, its logging and progress bars quieted (gradscope says what went wrong, once, at the end)."""
    try:
        import transformers  # an optional dependency: imported when a Hugging Face model is loaded
    except ImportError:
        raise ModelLoadError(
            f"cannot load {spec!r}: Hugging Face models need transformers: pip install transformers "
            "(gradscope's [hf] extra)"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:  # the hub client logs each retry
        from huggingface_hub.utils import logging as hub_logging  # comes with transformers

        hub_logging.set_verbosity_error()
    except ImportError:
        pass
    return transformers


@dataclass(frozen=True)
class _Source:
    """Where a model's files come from: the folder or hub id named (``spec``), or, for a folder holding a PEFT
    adapter, the base model its ``adapter_config.json`` names (``weights``)."""

    spec: str
    local: bool  # spec is a local directory
    weights: str  # where the weights come from: spec, or the adapter's base model
    weights_local: bool
    adapter: Optional[dict] = None  # the adapter's adapter_config.json

    @property
    def config_from(self) -> str:
        """An adapter saved with the fine-tuned model's config.json (its labels, problem_type) is described by it."""
        return self.spec if self.adapter is None or (Path(self.spec) / "config.json").is_file() else self.weights

    @property
    def preprocessing_from(self) -> str:
        """The adapter folder's own tokenizer or image processor if it was saved with one, else the base model's."""
        if self.adapter is None or any((Path(self.spec) / f).is_file() for f in _PREPROCESSOR_FILES):
            return self.spec
        return self.weights

    def not_loaded(self, name: str, exc: Exception) -> ModelLoadError:
        """The error for ``name`` (the folder or hub id, or the adapter's base model) failing to load."""
        if name == self.spec:
            return _load_error(self.spec, self.local, exc)
        return _base_error(self.spec, self.weights, self.weights_local, exc)


def _find_source(spec: str, local: bool) -> _Source:
    """The source of ``spec``; a local directory that holds neither a model nor an adapter is refused."""
    adapter = _read_adapter(spec) if local else None
    if adapter is not None:
        base = _adapter_base(spec, adapter)
        return _Source(spec, local, base, Path(base).is_dir() or is_local_path(base), adapter)
    if local and not (Path(spec) / "config.json").is_file():
        checkpoints = sorted((p for p in Path(spec).glob("checkpoint-*") if (p / "config.json").is_file()),
                             key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        hint = (f" (it holds the Trainer's checkpoints: pass one, e.g. {checkpoints[-1]})" if checkpoints else "")
        raise ModelLoadError(f"{spec} is a directory without config.json: give a directory written by "
                             f"save_pretrained{hint}")
    return _Source(spec, local, spec, local)


def _loading_line(source: _Source) -> str:
    """The progress line that says where the model is loaded from."""
    if source.adapter is not None:
        return (f"{source.spec} holds a {source.adapter.get('peft_type') or 'PEFT'} adapter: loading its base model "
                f"{source.weights}")
    if source.local:
        return f"loading {source.spec} (Hugging Face, local directory)"
    if offline():
        return f"loading {source.spec} from the Hugging Face cache (HF_HUB_OFFLINE is set)"
    return f"loading {source.spec} from the Hugging Face hub or its cache (offline? `HF_HUB_OFFLINE=1` skips the hub)"


def _read_config(transformers, source: _Source, trust_remote_code: bool):
    """The model's transformers config."""
    name = source.config_from
    try:
        return transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"{name} runs code shipped with the model; if you trust it, pass `trust_remote_code=True`"
            ) from None
        raise source.not_loaded(name, exc) from None
    except (OSError, EnvironmentError) as exc:
        raise source.not_loaded(name, exc) from None


@dataclass(frozen=True)
class _Head:
    """What a model is measured with: its task (see the module docstring), the objective the report names, the
    transformers Auto class that loads it with that head, and the loss."""

    task: str
    objective: str
    auto_name: str
    loss_fn: LossFn
    encoder: Optional[SentenceEncoder] = None  # a sentence-transformers folder's pooling, computed by gradscope
    new_head_size: bool = False  # the adapter's head has another number of labels than the base model's
    meta: dict = field(default_factory=dict)  # notes on the adapter's head
    not_followed: Optional[str] = None  # why a sentence-transformers folder is measured as its transformer alone


def _pick_head(source: _Source, hf_config, progress) -> _Head:
    """The head and objective, read from the config or the adapter (the config gets the adapter head's labels)."""
    labels_before = hf_config.num_labels
    encoder, not_followed, adapter_meta = None, None, {}
    if source.adapter is not None:
        task, adapter_meta = _adapter_task(source.spec, source.adapter, hf_config, progress)
    else:
        try:
            encoder = read_sentence_encoder(source.spec, hf_config)
        except NotFollowed as exc:
            not_followed = (f"a sentence-transformers model whose modules gradscope does not compute ({exc}), "
                            "measured as its transformer alone")
        task = "sentence-embedding" if encoder else _task(hf_config, source.spec)
    objective, auto_name, loss_fn = _TASKS[task]
    return _Head(task, objective, auto_name, encoder.loss if encoder else loss_fn, encoder,
                 new_head_size=source.adapter is not None and hf_config.num_labels != labels_before,
                 meta=adapter_meta, not_followed=not_followed)


def _load_weights(auto_class, source: _Source, hf_config, head: _Head, dtype: Optional[torch.dtype],
                  trust_remote_code: bool):
    """``auto_class.from_pretrained`` on the weights, with transformers' loading info; its failures in one line."""
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if head.new_head_size:
        kwargs["ignore_mismatched_sizes"] = True  # the base's own head is replaced by the adapter's
    weights = source.weights
    try:
        return auto_class.from_pretrained(weights, config=hf_config, output_loading_info=True, **kwargs)
    except (OSError, EnvironmentError) as exc:
        raise source.not_loaded(weights, exc) from None
    except ValueError as exc:
        raise ModelLoadError(f"cannot load {weights!r} as {auto_class.__name__}: {short_reason(exc)}") from None
    except Exception as exc:  # SafetensorError, UnpicklingError, RuntimeError: the weights themselves
        raise _weights_error(weights, source.weights_local, exc, lambda: auto_class.from_pretrained(
            weights, config=hf_config, output_loading_info=True, **{"ignore_mismatched_sizes": True, **kwargs})) from exc


def _with_adapter(model: nn.Module, info: dict, source: _Source, task: str, progress) -> tuple[nn.Module, list, list]:
    """The model with the adapter (if any) merged into it; the names of the weights initialized at random and of
    the checkpoint's tensors left out of the model, each said (a progress line, a warning)."""
    missing = list(info.get("missing_keys", []))
    if source.adapter is not None:
        model = _merge_adapter(model, source.spec, task)
        # The head the adapter saved replaces the one the base model lacked.
        saved = set(model.state_dict())
        missing = [k for k in missing if k in saved and not _adapter_saves(source.adapter, k)]
        progress(f"merged the adapter into {type(model).__name__} ({source.weights})")
    if missing:
        progress(f"{len(missing)} weights not in the checkpoint were initialized at random (e.g. {missing[0]})")
    unused = sorted(info.get("unexpected_keys", []))
    if unused:  # left out of the model: said on stderr now, and as a finding in the report
        warnings.warn(f"{len(unused)} tensor(s) of the checkpoint {source.weights} were not loaded into the model "
                      f"(e.g. {unused[0]}): the model measured is not the whole model saved", RuntimeWarning,
                      stacklevel=3)  # the caller of load_hf
    return model, missing, unused


def _scratch_maker(auto_class, hf_config, task: str, trust_remote_code: bool, device: torch.device,
                   dtype: torch.dtype) -> Callable[[], nn.Module]:
    """How ``scratch`` is built: the architecture from its config, with the library's own initialization."""
    pools_last = task.startswith("sequence-")

    def make_scratch() -> nn.Module:
        # from_config keeps the config object: a copy, so that the pad id set below stays with this model
        scratch = auto_class.from_config(copy.deepcopy(hf_config) if pools_last else hf_config,
                                         trust_remote_code=trust_remote_code)
        if pools_last:
            _pool_at_the_last_token(scratch)
        return scratch.to(device=device, dtype=dtype)

    return make_scratch


def _batches(spec: str, hf_config, head: _Head, options: LoadOptions, progress) -> tuple[list[dict], str]:
    """The batches the task reads (images, sentence pairs or text), and where they came from in words."""
    if head.task.startswith("image-"):
        return _image_batches(spec, hf_config, options)
    if head.encoder:
        return _sentence_batches(spec, hf_config, head.encoder, options, progress)
    return _text_batches(spec, hf_config, head.task, options, progress)


def _objective_meta(head: _Head, model: nn.Module, hf_config, batch_size: int, progress) -> dict:
    """The head's notes, the loss of chance where the objective has one, and the note on the objective in words
    (said as a progress line)."""
    meta = dict(head.meta)
    note = None
    if head.encoder:
        meta["chance"] = _chance(batch_size, f"the {batch_size} positives of a batch")
        note = _sentence_note(head.encoder, batch_size)
    elif head.task.startswith("surrogate"):
        vocabulary = model.get_input_embeddings().num_embeddings
        meta["chance"] = _chance(vocabulary, f"the {vocabulary} tokens of the vocabulary")
        note = _surrogate_note(hf_config)
    elif head.task == "image-backbone":
        note = (f"the model has no classification head: a fresh one (random weights, {hf_config.num_labels} "
                "classes) scores the backbone's output against seeded labels")
    if head.not_followed:
        note = f"{head.not_followed}; {note}" if note else head.not_followed
    if "chance" in meta:
        note += f"; chance {meta['chance']['loss']:.4g} ({meta['chance']['basis']})"
    if note:
        meta["objective_note"] = note
        progress(note)
    return meta


def _loaded_meta(model: nn.Module, hf_config, source: _Source, missing: list, unused: list, version: str) -> dict:
    """What the report says of the model loaded: its class and type, the weights not loaded or left out, the
    adapter merged."""
    meta = {
        "architecture": type(model).__name__,
        "model_type": hf_config.model_type,
        "missing_weights": len(missing),
        **({"unused_weights": {"count": len(unused), "examples": unused[:5]}} if unused else {}),
        "transformers": version,
    }
    if source.adapter is not None:
        meta["adapter"] = {"type": source.adapter.get("peft_type"), "task_type": source.adapter.get("task_type"),
                           "base": source.weights, "merged": True}
    return meta


def load_hf(spec: str, options: LoadOptions, progress: Callable[[str], None], *, local: bool) -> Subject:
    """Load a Hugging Face model, its head per the module docstring, its batches and objective."""
    transformers = _import_transformers(spec)
    source = _find_source(spec, local)  # the folder or hub id, or the base model an adapter names
    device, dtype = resolve_device(options.device), resolve_dtype(options.dtype)
    progress(_loading_line(source))
    hf_config = _read_config(transformers, source, options.trust_remote_code)
    head = _pick_head(source, hf_config, progress)
    auto_class = getattr(transformers, head.auto_name)
    _check_size(spec, auto_class, hf_config, dtype, options.trust_remote_code)  # before any weight is allocated
    model, info = _load_weights(auto_class, source, hf_config, head, dtype, options.trust_remote_code)
    model, missing, unused = _with_adapter(model, info, source, head.task, progress)
    model = model.to(device)
    if head.task.startswith("sequence-"):
        _pool_at_the_last_token(model)
    model_dtype = next(model.parameters()).dtype
    make_scratch = _scratch_maker(auto_class, hf_config, head.task, options.trust_remote_code, device,
                                  dtype or model_dtype)
    batches, inputs = _batches(source.preprocessing_from, hf_config, head, options, progress)
    objective_meta = _objective_meta(head, model, hf_config, options.batch_size, progress)
    return Subject(name=spec, source="huggingface", model=model, make_scratch=make_scratch,
                   batches=[to_device(b, device, model_dtype) for b in batches], loss_fn=head.loss_fn,
                   objective=head.objective, inputs=inputs,
                   meta={**_loaded_meta(model, hf_config, source, missing, unused, transformers.__version__),
                         **objective_meta})
