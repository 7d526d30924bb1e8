"""Loading what a user names: the head and objective a model was trained with, the inputs it can read,
and loader failures as one line that says what to do (exit 3 for the model, exit 2 for the usage)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
import gradscope.models.inputs
from gradscope import analysis
from gradscope.cli import main
from gradscope.errors import ModelLoadError, UsageError
from gradscope.models import LoadOptions, load_subject

import helpers_models as hm

SMALL = dict(batch_size=2, seq_len=16, device="cpu")
SMALL_IMAGES = dict(batch_size=2, device="cpu")  # seq_len is refused for an image model
ONLY_PRETRAINED = dict(baselines=("pretrained",), **SMALL)


def load_options(**fields) -> LoadOptions:
    """The loaders' options, as analyze builds them from an AnalyzeConfig of ``fields``."""
    return gradscope.AnalyzeConfig(**fields).load_options()


@pytest.mark.slow
def test_the_loaders_take_their_own_options_built_once_from_the_config():
    import dataclasses
    import subprocess
    import sys

    config = gradscope.AnalyzeConfig(baselines=("pretrained",), what_ifs=("he",), batch_size=3, seq_len=16,
                                     batches=2, seed=5, device="cpu", dtype="bfloat16", text="t.txt",
                                     trust_remote_code=True)
    options = config.load_options()
    assert dataclasses.asdict(options) == {
        "batch_size": 3, "batches": 2, "seq_len": 16, "seed": 5, "device": "cpu", "dtype": "bfloat16",
        "text": "t.txt", "images": None, "image_size": None, "arch": None, "trust_remote_code": True}
    assert options.samples == 6
    assert not hasattr(options, "baselines") and not hasattr(options, "what_ifs")  # the variants' part, not theirs
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 1  # type: ignore[misc]
    # every option of the loaders is a field of the config, under the same name
    assert {f.name for f in dataclasses.fields(LoadOptions)} <= {f.name for f in dataclasses.fields(config)}
    # the loaders never reach back into the analyzer
    loaded = subprocess.run([sys.executable, "-c", "import sys, gradscope.models; "
                             "print('gradscope.analyzer' in sys.modules)"], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert loaded.stdout.strip() == "False"


def _one_clean_line(message: str) -> None:
    assert "\n" not in message and "\x1b" not in message, message


# --- text inputs: never a batch with nothing to predict -------------------------------------------


def test_bert_without_tokenizer_files_gets_seeded_ids_not_a_batch_of_unknown_tokens(tmp_path):
    """transformers makes up a tokenizer of special tokens only; read with it, every word is [UNK], nothing is
    masked and the loss is NaN. gradscope uses seeded ids instead, as for a GPT-2 without a tokenizer."""
    directory = hm.save_small_bert(tmp_path)
    progress = []
    report = gradscope.analyze(str(directory), gradscope.AnalyzeConfig(**SMALL), progress=progress.append)
    assert report.meta["objective"] == "masked-lm"
    assert report.meta["inputs"].startswith("seeded random token ids (no tokenizer), 2 x 16, ")
    assert "no tokenizer: using seeded random token ids" in progress
    for summary in report.summaries:
        assert math.isfinite(summary["loss"]) and summary["verdict"] != "non-finite", summary["variant"]


def test_a_saved_tokenizer_of_special_tokens_only_is_named_as_the_reason(tmp_path):
    directory = hm.save_small_vocab_tokenizer(hm.save_small_bert(tmp_path), words=())
    progress = []
    subject = load_subject(str(directory), load_options(**SMALL), progress.append)
    assert subject.inputs.startswith("seeded random token ids (its tokenizer knows only special tokens), 2 x 16")
    assert "its tokenizer knows only special tokens: using seeded random token ids" in progress
    with pytest.raises(UsageError, match=r"`text`: .* has no tokenizer to read text with \(its tokenizer knows only "
                                         r"special tokens\); save the model's tokenizer next to it"):
        text = tmp_path / "t.txt"
        text.write_text("some words to read")
        load_subject(str(directory), load_options(text=str(text), **SMALL), lambda _: None)


def test_tokenizer_that_reads_the_corpus_as_unknown_tokens_falls_back_and_says_why(tmp_path):
    directory = hm.save_small_vocab_tokenizer(hm.save_small_bert(tmp_path))  # knows "the", "a", "of" only
    subject = load_subject(str(directory), load_options(**SMALL), lambda m: None)
    assert subject.inputs.startswith("seeded random token ids (the tokenizer reads ")
    assert "of the built-in corpus as unknown tokens), 2 x 16" in subject.inputs
    assert int((subject.batches[0]["labels"] != -100).sum()) > 0

    text = tmp_path / "words.txt"
    text.write_text("colourless green ideas sleep furiously\n")
    with pytest.raises(UsageError, match=r"`text='.*words.txt'`: the tokenizer reads 100% of the text file .* as "
                                         "unknown tokens; give text the model's tokenizer knows"):
        load_subject(str(directory), load_options(text=str(text), **SMALL), lambda m: None)


def test_text_of_special_tokens_only_is_a_usage_error_not_a_nan_loss(tmp_path):
    directory = hm.save_small_vocab_tokenizer(hm.save_small_bert(tmp_path))
    text = tmp_path / "specials.txt"
    text.write_text("[CLS] [SEP] [PAD]\n")
    with pytest.raises(UsageError, match="holds only special or unknown tokens"):
        gradscope.analyze(str(directory), gradscope.AnalyzeConfig(text=str(text), **ONLY_PRETRAINED))


def test_text_the_tokenizer_knows_is_read_and_masked(tmp_path):
    directory = hm.save_small_vocab_tokenizer(hm.save_small_bert(tmp_path))
    text = tmp_path / "known.txt"
    text.write_text("the a of the a of\n")
    subject = load_subject(str(directory), load_options(text=str(text), **SMALL), lambda m: None)
    # 6 words, one token each, fill 2 x (16 - 2 special) positions: the text goes round 28 / 6 times
    assert subject.inputs.startswith(f"text file {text}, 2 packed sequences of 16 tokens "
                                     "(the text is shorter: repeated 4.67 times), ")
    labels = subject.batches[0]["labels"]
    assert set(labels[labels != -100].tolist()) <= {5, 6, 7}  # only words are masked, never [CLS]/[SEP]


# --- task heads: kept, with an objective that fits them -------------------------------------------


def test_sequence_classifier_keeps_its_head_and_gets_cross_entropy_over_its_labels(tmp_path):
    directory = hm.save_small_bert(tmp_path, head="BertForSequenceClassification", num_labels=3)
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), **SMALL)
    labels = load_subject(str(directory), config.load_options(), lambda m: None).batches[0]["labels"]
    assert labels.dtype == torch.long and labels.shape == (2,) and labels.min() >= 0 and labels.max() < 3

    report = gradscope.analyze(str(directory), config)
    assert report.meta["objective"] == "cross-entropy"
    assert report.meta["architecture"] == "BertForSequenceClassification"
    assert report.meta["missing_weights"] == 0
    assert report.meta["inputs"].endswith("seeded random labels over 3 classes")
    for variant in ("pretrained", "scratch"):  # scratch: the same architecture, head included
        rows = {r["name"]: r for r in report.params if r["variant"] == variant}
        assert rows["classifier.weight"]["has_grad"] and rows["classifier.weight"]["grad_l2"] > 0, variant
        assert rows["classifier.weight"]["shape"] == [3, 16]
        assert math.isfinite(report.summary(variant)["loss"])


def test_token_classifier_gets_a_seeded_label_per_token(tmp_path):
    directory = hm.save_small_vocab_tokenizer(hm.save_small_bert(tmp_path, head="BertForTokenClassification",
                                                                 num_labels=4))
    text = tmp_path / "known.txt"
    text.write_text("the a of the a of\n")
    config = gradscope.AnalyzeConfig(text=str(text), **ONLY_PRETRAINED)
    batch = load_subject(str(directory), config.load_options(), lambda m: None).batches[0]
    labels = batch["labels"]
    assert labels.shape == (2, 16)
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()  # [CLS] and [SEP] are not labelled
    assert labels[:, 1:-1].min() >= 0 and labels[:, 1:-1].max() < 4

    report = gradscope.analyze(str(directory), config)
    assert report.meta["objective"] == "cross-entropy"
    assert report.meta["inputs"].endswith("seeded random labels over 4 classes per token")
    rows = {r["name"]: r for r in report.params}
    assert rows["classifier.weight"]["grad_l2"] > 0


def test_one_label_sequence_head_is_regression(tmp_path):
    directory = hm.save_small_bert(tmp_path, head="BertForSequenceClassification", num_labels=1)
    report = gradscope.analyze(str(directory), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))
    assert report.meta["objective"] == "mean-squared-error"
    assert report.meta["inputs"].endswith("seeded standard-normal regression targets")
    assert {r["name"]: r for r in report.params}["classifier.weight"]["grad_l2"] > 0


def test_multi_label_head_gets_binary_cross_entropy_on_0_1_labels(tmp_path):
    directory = hm.save_small_bert(tmp_path, head="BertForSequenceClassification", num_labels=5,
                                   problem_type="multi_label_classification")
    config = gradscope.AnalyzeConfig(**ONLY_PRETRAINED)
    labels = load_subject(str(directory), config.load_options(), lambda m: None).batches[0]["labels"]
    assert labels.shape == (2, 5) and set(labels.unique().tolist()) <= {0, 1}
    report = gradscope.analyze(str(directory), config)
    assert report.meta["objective"] == "binary-cross-entropy"
    assert report.meta["inputs"].endswith("seeded random 0/1 labels for each of 5 classes")
    assert math.isfinite(report.summary("pretrained")["loss"])
    assert {r["name"]: r for r in report.params}["classifier.weight"]["grad_l2"] > 0


def test_one_label_multi_label_head_stays_binary_cross_entropy(tmp_path):
    # a multi-label problem_type decides, as in transformers: its one label is not a regression target
    directory = hm.save_small_bert(tmp_path, head="BertForSequenceClassification", num_labels=1,
                                   problem_type="multi_label_classification")
    subject = load_subject(str(directory), load_options(**SMALL), lambda m: None)
    assert subject.objective == "binary-cross-entropy" and subject.batches[0]["labels"].shape == (2, 1)


def test_decoder_sequence_classifier_without_a_pad_token_reads_the_last_token(tmp_path):
    """GPT-2 classifiers usually name no pad token, and then refuse batches of several sequences."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64, num_labels=3,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2ForSequenceClassification(config).save_pretrained(tmp_path)
    analyze_config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), **SMALL)
    subject = load_subject(str(tmp_path), analyze_config.load_options(), lambda m: None)
    batch = subject.batches[0]
    model = subject.model.eval()
    both = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.config.pad_token_id = None  # one sequence at a time: transformers reads its last token
    alone = torch.cat([model(input_ids=row[None]).logits for row in batch["input_ids"]])
    torch.testing.assert_close(both, alone)
    report = gradscope.analyze(str(tmp_path), analyze_config)
    assert report.meta["objective"] == "cross-entropy"
    for variant in ("pretrained", "scratch"):
        assert math.isfinite(report.summary(variant)["loss"]), variant
        assert {r["name"]: r for r in report.params if r["variant"] == variant}["score.weight"]["grad_l2"] > 0


@pytest.mark.parametrize("head, says", [
    ("BertModel", "the model has no language-model head"),
    ("BertForQuestionAnswering", "gradscope has no objective for the BertForQuestionAnswering head, so it is "
                                 "left out"),
])
def test_a_surrogate_objective_says_what_it_is(tmp_path, head, says):
    progress = []
    subject = load_subject(str(hm.save_small_bert(tmp_path, head=head)), load_options(**SMALL),
                           progress.append)
    assert subject.objective == "surrogate-masked-lm"
    note = subject.meta["objective_note"]
    assert note.startswith("surrogate loss: ") and says in note and "own input embeddings" in note
    assert note.endswith("; chance 4.159 (ln 64, a uniform guess among the 64 tokens of the vocabulary)")
    assert subject.meta["chance"] == {"loss": math.log(64),
                                      "basis": "ln 64, a uniform guess among the 64 tokens of the vocabulary"}
    assert note in progress


# --- the objective against chance: a pretrained model no better than chance is not measured as trained --------


def _chance_finding(loss: float, variant: str = "pretrained"):
    return analysis.chance_finding({"variant": variant, "verdict": "healthy", "loss": loss}, "surrogate-masked-lm",
                                   {"loss": math.log(30522), "basis": "ln 30522, a uniform guess among the 30522 "
                                                                      "tokens of the vocabulary"})


@pytest.mark.parametrize("loss", [10.64, math.log(30522)])
def test_a_pretrained_loss_at_or_above_chance_is_a_warning_that_the_objective_may_not_represent_the_model(loss):
    finding = _chance_finding(loss)
    assert finding["severity"] == "warning" and finding["kind"] == "objective-at-chance"
    assert finding["message"] == ("the pretrained model does no better than chance at the surrogate-masked-lm "
                                  "objective: the objective may not represent the model, and the gradient measured "
                                  "with it may say little about it")
    assert finding["evidence"] == (f"pretrained loss {loss:.4g} >= chance 10.33 (ln 30522, a uniform guess among the "
                                   "30522 tokens of the vocabulary)")
    assert "gradscope.analyze(model, batch=..., loss_fn=...)" in finding["fix"] and "with its head" in finding["fix"]


def test_a_pretrained_loss_below_chance_says_by_how_much_and_other_variants_are_not_judged():
    finding = _chance_finding(2.5)
    assert (finding["severity"], finding["kind"]) == ("info", "objective-below-chance")
    assert finding["message"] == ("the pretrained model does better than chance at the surrogate-masked-lm "
                                  "objective: its loss is 0.24x chance")
    assert finding["evidence"].startswith("pretrained loss 2.5 < chance 10.33 (ln 30522, ")
    assert _chance_finding(11.0, variant="scratch") is None  # scratch is at chance by construction
    assert _chance_finding(math.nan) is None  # the non-finite finding says what matters
    assert analysis.chance_finding({"variant": "pretrained", "verdict": "healthy", "loss": 11.0}, "custom",
                                   None) is None


def test_real_minilm_without_its_sentence_transformers_files_is_at_chance_on_the_surrogate_and_says_so(tmp_path):
    """The issue's case: all-MiniLM-L6-v2 scored with the masked-token surrogate does worse than a uniform
    guess over its vocabulary (measured 10.64 on 8 x 128 tokens)."""
    config = gradscope.AnalyzeConfig(baselines=("pretrained",), batch_size=4, seq_len=32, device="cpu")
    report = gradscope.analyze(str(hm.minilm_without_modules(tmp_path / "minilm")), config)
    assert report.meta["objective"] == "surrogate-masked-lm"
    assert report.meta["chance"]["loss"] == math.log(30522)
    loss = report.summary("pretrained")["loss"]
    assert loss > math.log(30522)
    [finding] = [f for f in report.findings if f["kind"] == "objective-at-chance"]
    assert finding["evidence"].startswith(f"pretrained loss {loss:.4g} >= chance 10.33 (ln 30522, ")


# --- sentence-transformers folders: the pooling they define, the contrastive loss they were trained with ------


def test_real_minilm_is_measured_contrastively_on_sentence_halves_well_below_chance_and_scratch():
    """all-MiniLM-L6-v2 as sentence-transformers saves it (mean pooling, Normalize): on 8 pairs of sentence
    halves from the built-in corpus its in-batch contrastive loss is about half of chance (measured 1.059
    against ln 8 = 2.079), where the same architecture from scratch is at chance (measured 2.09)."""
    config = gradscope.AnalyzeConfig(baselines=("pretrained", "scratch"), device="cpu")
    report = gradscope.analyze(str(hm.minilm_dir()), config)
    assert report.meta["objective"] == "multiple-negatives-ranking"
    assert report.meta["chance"] == {"loss": math.log(8), "basis": "ln 8, a uniform guess among the 8 positives of "
                                                                   "a batch"}
    assert report.meta["objective_note"] == (
        "sentence-transformers model: its transformer with the folder's mean pooling, normalized, measured with the "
        "in-batch contrastive loss it was trained with, on sentence pairs: each sentence split at its middle word, "
        "its first half the anchor and its second half the positive, the other positives of the batch its "
        "negatives; MultipleNegativesRankingLoss: cross-entropy over 20 x the cosine similarity of each anchor to "
        "the 8 positives of its batch; chance 2.079 (ln 8, a uniform guess among the 8 positives of a batch)")
    assert report.meta["inputs"] == ("built-in corpus, 8 sentence pairs (halves of 9 to 12 tokens, padded to the "
                                     "longest in the batch)")
    pretrained, scratch = report.summary("pretrained")["loss"], report.summary("scratch")["loss"]
    assert pretrained < 0.6 * math.log(8) and pretrained < 0.6 * scratch
    assert scratch == pytest.approx(math.log(8), rel=0.05)
    assert [b["block"] for b in report.block_rows("pretrained")] == [f"encoder.layer.{i}" for i in range(6)]
    [finding] = [f for f in report.findings if f["kind"] == "objective-below-chance"]
    assert finding["evidence"].startswith(f"pretrained loss {pretrained:.4g} < chance 2.079 (ln 8, ")


def test_the_contrastive_loss_of_real_minilm_is_sentence_transformers_own():
    """The same pairs through the sentence_transformers package: its model (Transformer, Pooling, Normalize)
    and its MultipleNegativesRankingLoss give the loss gradscope computes without it."""
    st = pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers for the reference")
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers before 5.x
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    subject = load_subject(str(hm.minilm_dir()), load_options(batch_size=8, device="cpu"), lambda _: None)
    with torch.no_grad():
        ours = float(subject.loss_fn(subject.model, subject.batches[0]))
    reference_model = st.SentenceTransformer(str(hm.minilm_dir()), device="cpu")
    anchors, positives = zip(*gradscope.models.inputs.sentence_halves(gradscope.models.inputs.builtin_corpus())[:8])
    embeddings = [reference_model.encode(list(texts), convert_to_tensor=True) for texts in (anchors, positives)]
    reference = float(MultipleNegativesRankingLoss(reference_model).compute_loss_from_embeddings(embeddings, None))
    assert ours == pytest.approx(reference, rel=1e-5)


def _pooled_reference(hidden: torch.Tensor, mask: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """Each sentence's embedding from its kept tokens, one sentence at a time (float64)."""
    rows = []
    for states, keep in zip(hidden, mask.bool()):
        kept = states[keep]
        pooled = {"mean": kept.mean(dim=0), "cls": kept[0], "max": kept.max(dim=0).values}[pooling]
        rows.append(pooled / pooled.norm() if normalize else pooled)
    return torch.stack(rows)


def _ranking_reference(anchors: torch.Tensor, positives: torch.Tensor) -> float:
    """-mean_i log softmax_j(20 cos(a_i, p_j))[i], written out."""
    total = 0.0
    for i, anchor in enumerate(anchors):
        scores = [20 * float(anchor @ p / (anchor.norm() * p.norm())) for p in positives]
        top = max(scores)
        total += top + math.log(sum(math.exp(s - top) for s in scores)) - scores[i]
    return total / len(anchors)


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False), ("max", True)])
def test_a_sentence_transformers_folder_is_its_transformer_pooled_as_its_config_says(tmp_path, pooling, normalize):
    directory = hm.save_tiny_sentence_transformer(tmp_path, pooling=pooling, normalize=normalize)
    subject = load_subject(str(directory), load_options(batch_size=4, device="cpu"), lambda _: None)
    assert subject.objective == "multiple-negatives-ranking"
    assert type(subject.model).__name__ == "BertModel"
    assert f"its transformer with the folder's {pooling} pooling{', normalized' if normalize else ''}, " in \
        subject.meta["objective_note"]
    batch = subject.batches[0]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 8  # 4 anchors, then their 4 positives
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    first = gradscope.models.inputs.builtin_corpus()[0].split()
    for row, words in ((0, first[:len(first) // 2]), (4, first[len(first) // 2:])):
        assert ids[row][mask[row].bool()].tolist() == tokenizer(" ".join(words))["input_ids"]
    model = subject.model.double()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = _ranking_reference(*_pooled_reference(hidden, mask, pooling, normalize).chunk(2))
        assert float(subject.loss_fn(model, batch)) == pytest.approx(expected, rel=1e-10)


def test_a_tiny_sentence_transformers_folder_runs_every_baseline_on_its_encoder_layers(tmp_path):
    report = gradscope.analyze(str(hm.save_tiny_sentence_transformer(tmp_path)),
                               gradscope.AnalyzeConfig(batch_size=4, device="cpu"))
    assert report.meta["objective"] == "multiple-negatives-ranking"
    assert [v["name"] for v in report.variants] == ["pretrained", "scratch", "shallow"]
    assert [b["block"] for b in report.block_rows("shallow")] == ["encoder.layer.0", "encoder.layer.1"]
    for summary in report.summaries:
        assert math.isfinite(summary["loss"]) and summary["verdict"] != "non-finite", summary["variant"]


def test_a_sentence_transformers_folder_with_modules_gradscope_does_not_compute_says_so(tmp_path):
    directory = hm.save_tiny_sentence_transformer(tmp_path, extra_module="sentence_transformers.models.Dense")
    subject = load_subject(str(directory), load_options(**SMALL), lambda _: None)
    assert subject.objective == "surrogate-masked-lm"
    assert subject.meta["objective_note"].startswith(
        "a sentence-transformers model whose modules gradscope does not compute (its modules.json names "
        "sentence_transformers.models.Dense, which gradscope does not compute), measured as its transformer alone; "
        "surrogate loss: the model has no language-model head")


@pytest.mark.parametrize("lines, batch_size, says", [
    (None, 1, "`batch_size=1`: an in-batch contrastive loss needs at least 2 sentence pairs in a batch (each "
              "pair's negatives are the others)"),
    (["one two three", "four five", "six", "seven eight"], 4,
     "`batch_size=4`: the text has 3 sentences of two words or more to pair, and a batch needs 4 different ones; "
     "give more lines or a smaller `batch_size`"),
])
def test_sentence_pairs_need_different_pairs_in_a_batch(tmp_path, lines, batch_size, says):
    directory = hm.save_tiny_sentence_transformer(tmp_path / "model")
    text = None
    if lines:
        text = tmp_path / "text.txt"
        text.write_text("\n".join(lines))
    config = gradscope.AnalyzeConfig(batch_size=batch_size, text=str(text) if text else None, device="cpu")
    with pytest.raises(UsageError) as raised:
        load_subject(str(directory), config.load_options(), lambda _: None)
    assert str(raised.value) == says


def test_sentence_halves_split_each_line_at_its_middle_word():
    assert gradscope.models.inputs.sentence_halves(["a b c d e", "one", "x y"]) == [("a b", "c d e"), ("x", "y")]


# --- encoder-decoders, discriminators, backbones: their own objective ------------------------------

T5 = dict(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
          decoder_start_token_id=0)  # as t5-small's config
BART = dict(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)


@pytest.mark.parametrize("model_class", ["T5ForConditionalGeneration", "T5Model"])
def test_t5_is_measured_as_a_seq2seq_lm_writing_its_input_back(tmp_path, model_class):
    subject = load_subject(str(hm.save_small(tmp_path, model_class, "T5Config", **T5)),
                           load_options(**SMALL), lambda _: None)
    assert subject.objective == "seq2seq-lm" and type(subject.model).__name__ == "T5ForConditionalGeneration"
    batch = subject.batches[0]
    assert torch.equal(batch["labels"], batch["input_ids"])  # no tokenizer, no mask token: the text itself
    loss = subject.loss_fn(subject.model, batch)
    logits = subject.model(input_ids=batch["input_ids"], labels=batch["labels"]).logits  # teacher forcing
    assert math.isclose(loss.item(), F.cross_entropy(logits.reshape(-1, 64), batch["labels"].reshape(-1)).item(),
                        rel_tol=1e-5)
    report = gradscope.analyze(str(tmp_path), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))
    assert report.summary("pretrained")["params_no_grad"] == []  # the encoder's gradient comes through the decoder
    assert [r["block"] for r in report.block_rows("pretrained")] == [
        "encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]


def test_an_encoder_decoder_is_judged_per_stack(tmp_path):
    hm.save_small(tmp_path, "T5ForConditionalGeneration", "T5Config", **{**T5, "num_layers": 3,
                                                                           "num_decoder_layers": 3})
    report = gradscope.analyze(str(tmp_path), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))
    summary = report.summary("pretrained")
    flow = {r["block"]: r["act_grad_l2"] for r in report.block_rows("pretrained")}
    encoder, decoder = summary["stacks"]
    assert (encoder["first_block"], encoder["last_block"], decoder["first_block"], decoder["last_block"]) == (
        "encoder.block.0", "encoder.block.2", "decoder.block.0", "decoder.block.2")
    assert math.isclose(encoder["first_to_last_ratio"], flow["encoder.block.0"] / flow["encoder.block.2"])
    assert math.isclose(decoder["first_to_last_ratio"], flow["decoder.block.0"] / flow["decoder.block.2"])
    assert math.isclose(encoder["into_next_ratio"], flow["encoder.block.2"] / flow["decoder.block.0"])
    # the verdict and the table's first/last are of the stack whose flow changes most, not encoder.0 / decoder.2
    extreme = max((encoder, decoder), key=lambda st: abs(math.log(st["first_to_last_ratio"])))
    assert summary["first_to_last_ratio"] == extreme["first_to_last_ratio"]
    assert (summary["first_block"], summary["last_block"]) == (extreme["first_block"], extreme["last_block"])
    assert any(f["kind"] == "stacks" and "through cross-attention" in f["evidence"] for f in report.findings)
    from gradscope.report.terminal import summary_lines

    legend = summary_lines(report)[-1]  # under the table: which stack each row's first/last is of
    assert legend.endswith(f"(pretrained {summary['first_block']} to {summary['last_block']})")


def test_bart_denoises_its_masked_input(tmp_path):
    hm.save_small(tmp_path, "BartForConditionalGeneration", "BartConfig", **BART)
    hm.save_small_vocab_tokenizer(tmp_path, words=tuple("the a of and to in is it".split()))
    subject = load_subject(str(tmp_path), load_options(**SMALL), lambda _: None)
    assert subject.objective == "seq2seq-lm" and "masked in the encoder's input" in subject.inputs
    batch = subject.batches[0]
    masked = batch["input_ids"] != batch["labels"]
    assert masked.any() and bool((batch["input_ids"][masked] == 4).all())  # [MASK] is id 4 in that vocabulary


def test_electra_discriminator_detects_replaced_tokens(tmp_path):
    hm.save_small(tmp_path, "ElectraForPreTraining", "ElectraConfig", vocab_size=64, embedding_size=16,
                  hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=64)
    subject = load_subject(str(tmp_path), load_options(**SMALL), lambda _: None)
    assert subject.objective == "replaced-token-detection"
    assert type(subject.model).__name__ == "ElectraForPreTraining"  # its trained discriminator head, not an MLM
    batch = subject.batches[0]
    assert set(batch["labels"].unique().tolist()) == {0, 1}
    logits = subject.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.binary_cross_entropy_with_logits(logits, batch["labels"].float())
    assert math.isclose(subject.loss_fn(subject.model, batch).item(), expected.item(), rel_tol=1e-5)


def test_a_vision_backbone_gets_a_fresh_head_and_says_so(tmp_path):
    hm.save_small(tmp_path, "Dinov2Model", "Dinov2Config", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  mlp_ratio=2, image_size=32, patch_size=8)
    progress = []
    config = gradscope.AnalyzeConfig(baselines=("pretrained",), **SMALL_IMAGES)
    report = gradscope.analyze(str(tmp_path), config, progress=progress.append)
    note = report.meta["objective_note"]
    assert note.startswith("the model has no classification head: a fresh one") and note in progress
    assert report.summary("pretrained")["blocks"] == 2 and math.isfinite(report.summary("pretrained")["loss"])


@pytest.mark.parametrize("model_class, config_class, kwargs, says", [
    ("CLIPModel", "CLIPConfig", dict(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                      num_hidden_layers=1, num_attention_heads=2),
                                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                        num_attention_heads=2, image_size=32, patch_size=8),
                                     projection_dim=8),
     "CLIPModel (clip): it reads text and images together"),
    ("Wav2Vec2ForCTC", "Wav2Vec2Config", dict(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32,
                                              conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
     "Wav2Vec2ForCTC (wav2vec2): it reads audio"),
    ("Wav2Vec2ForPreTraining", "Wav2Vec2Config", dict(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                      num_attention_heads=2, intermediate_size=32,
                                                      conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                                      codevector_dim=8, proj_codevector_dim=8),
     "Wav2Vec2ForPreTraining (wav2vec2): it reads audio"),  # not a masked LM for being ...ForPreTraining
])
def test_models_gradscope_cannot_feed_are_refused_in_one_line(tmp_path, model_class, config_class, kwargs, says):
    hm.save_small(tmp_path, model_class, config_class, **kwargs)
    with pytest.raises(ModelLoadError) as caught:
        gradscope.analyze(str(tmp_path), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))
    message = str(caught.value)
    _one_clean_line(message)
    assert says in message and "gradscope.analyze(model, batch=..., loss_fn=...)" in message


# --- loader failures: one line, exit 3 ------------------------------------------------------------


def test_truncated_safetensors_in_a_hf_directory(tmp_path):
    directory = hm.save_small_bert(tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="safetensors weights are damaged or truncated .*save the model again"):
        gradscope.analyze(str(directory), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))


class Opaque:
    """A class a weights-only load will not import."""


def test_hf_directory_whose_bin_needs_pickled_code(tmp_path):
    directory = hm.save_small_bert(tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(64, 16), "extra": Opaque()},
               directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze(str(directory), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))
    message = str(info.value)
    _one_clean_line(message)
    assert "needs pickled code to load (it refers to test_loading.Opaque)" in message
    assert "gradscope loads weights only (safetensors, or torch.load with weights_only=True)" in message


def test_config_whose_sizes_do_not_match_the_weights(tmp_path):
    import json

    directory = hm.save_small_bert(tmp_path, head="BertForSequenceClassification", num_labels=3)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(5)}  # 5 classes, a head saved with 3
    config["label2id"] = {f"L{i}": i for i in range(5)}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"weights do not match the sizes in its config.json \(classifier.bias "
                                             r"is \[3\] in the checkpoint, \[5\] by the config; 2 tensors differ\)"):
        gradscope.analyze(str(directory), gradscope.AnalyzeConfig(**ONLY_PRETRAINED))


@pytest.mark.parametrize("content, says", [
    (b"", "the file is empty (0 bytes)"),
    (b"hello\nworld\n", "it is neither a torch.save file nor safetensors (KeyError: 101)"),
    (b"xyz garbage", "it is neither a torch.save file nor safetensors"),
])
def test_a_file_that_is_not_a_checkpoint(tmp_path, content, says):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", device="cpu"))
    _one_clean_line(str(info.value))
    assert says in str(info.value)


def test_pickled_checkpoint_refusal_is_one_clean_line_without_warnings(tmp_path, recwarn):
    path = tmp_path / "whole-model.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", device="cpu"))
    message = str(info.value)
    _one_clean_line(message)
    assert f"refusing {path}: it needs pickled code to load (it refers to torch.nn.modules.container.Sequential)" \
        in message
    assert "Weights only load failed" not in message  # torch's own paragraph, with its colour codes, is left out
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# --- what a user names: paths, --arch -------------------------------------------------------------


@pytest.mark.parametrize("spec", ["/tmp/gradscope-no-such/dir", "./no-such-model", "../no-such-model",
                                  "nested/no/such", "no-such-weights.safetensors", "~/gradscope-no-such"])
def test_a_path_that_does_not_exist_is_no_hub_lookup(spec):
    with pytest.raises(ModelLoadError, match="^no such file or directory: ") as info:
        gradscope.analyze(spec, gradscope.AnalyzeConfig(device="cpu"))
    assert "hf download" not in str(info.value)


def test_a_trainer_output_dir_and_a_folder_without_weights_say_what_to_pass(tmp_path):
    for step in (5, 10):  # by number: checkpoint-10 is the last, though "checkpoint-5" sorts after it
        checkpoint = tmp_path / "output" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"without config.json: .*pass one, e.g. .*output/checkpoint-10\)$"):
        gradscope.analyze(str(tmp_path / "output"), gradscope.AnalyzeConfig(device="cpu"))
    bare = hm.save_tiny_bert(tmp_path / "bare")
    for weights in bare.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"holds no weights file: save the model with save_pretrained\)$") as info:
        gradscope.analyze(str(bare), gradscope.AnalyzeConfig(device="cpu"))
    _one_clean_line(str(info.value))


def _zip_archive() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not a checkpoint")
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, says", [
    ("notes.txt", "Gradients flow backwards.\nThrough every layer: é, ü.\n".encode(),
     "it looks like a text file, not a checkpoint (neither safetensors nor a torch.save archive)"),
    ("weights.pt", b"hello\nworld\n", "it looks like a text file, not a checkpoint (neither safetensors nor a "
                                       "torch.save archive)"),  # the bytes say what a file is, not its name
    ("weights.bin", b"", "it is empty (0 bytes)"),
    ("weights.zip", _zip_archive(), "it is a zip archive, but not one torch.save wrote"),
    ("model.onnx", bytes(range(256)), "its first bytes are neither safetensors nor a torch.save archive"),
], ids=["text", "text-named-pt", "empty", "zip", "binary"])
def test_a_file_that_is_no_model_says_what_it_is_and_what_to_give(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(device="cpu"))
    assert str(info.value) == (f"{path} is not a model: {says}; give a Hugging Face model directory or hub id, a "
                               "torchvision model name, or a .safetensors/.pt checkpoint with `arch`")


def test_a_file_of_a_hugging_face_directory_says_to_give_the_directory(tmp_path):
    directory = hm.save_tiny_bert(tmp_path / "bert")
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze(str(directory / "config.json"), gradscope.AnalyzeConfig(device="cpu"))
    assert str(info.value) == (f"{directory / 'config.json'} is not a model: it looks like a text file, not a "
                               "checkpoint (neither safetensors nor a torch.save archive); give the directory it is "
                               f"in: gradscope analyze {directory}")


def _save_safetensors(path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))


@pytest.mark.parametrize("save, what", [
    (lambda path: torch.save({"w": torch.zeros(2)}, path), "torch.save"),
    (lambda path: torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False), "torch.save"),
    (_save_safetensors, "safetensors"),
], ids=["torch-zip", "torch-legacy-pickle", "safetensors"])
def test_a_checkpoint_without_arch_is_named_by_its_format(tmp_path, save, what):
    path = tmp_path / "weights"  # no suffix: the format is read from the file
    save(path)
    with pytest.raises(UsageError) as info:
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(device="cpu"))
    assert str(info.value) == (f"{path} is a {what} checkpoint file: name its architecture with `arch` (e.g. "
                               "`arch='resnet50'`), or give the directory a Hugging Face model was saved to")


def test_arch_with_a_hf_directory_says_to_leave_it_out(tmp_path):
    with pytest.raises(UsageError, match="`arch` is for a checkpoint file, and .* is a directory; leave out `arch`"):
        gradscope.analyze(str(tmp_path), gradscope.AnalyzeConfig(arch="resnet18", device="cpu"))


def test_unknown_arch_is_a_usage_error_with_close_matches(tmp_path):
    with pytest.raises(UsageError, match="`arch='resnet999'`: unknown torchvision classification model; "
                                         "close matches: .*resnet18"):
        gradscope.analyze(str(tmp_path / "weights.pt"), gradscope.AnalyzeConfig(arch="resnet999", device="cpu"))


def test_a_safetensors_checkpoint_whose_head_sorts_before_its_body(tmp_path):
    # safetensors stores keys sorted: ConvNeXt's classifier.2.weight comes before the Linear layers of its blocks
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(torchvision.models.convnext_tiny(num_classes=7).state_dict(), str(tmp_path / "c.safetensors"))
    config = gradscope.AnalyzeConfig(arch="convnext_tiny", image_size=32, **SMALL_IMAGES)
    subject = load_subject(str(tmp_path / "c.safetensors"), config.load_options(), lambda _: None)
    assert subject.model.classifier[2].out_features == 7 and "over 7 classes" in subject.inputs


def test_a_checkpoint_of_an_architecture_that_cannot_be_built_on_the_meta_device(tmp_path):
    torchvision = pytest.importorskip("torchvision")  # RegNet's __init__ reads tensor values
    torch.manual_seed(0)
    torch.save(torchvision.models.regnet_y_400mf(num_classes=6).state_dict(), tmp_path / "r.pt")
    subject = load_subject(str(tmp_path / "r.pt"), load_options(arch="regnet_y_400mf", image_size=32,
                                                                          **SMALL_IMAGES), lambda _: None)
    assert subject.model.fc.out_features == 6


def test_a_vision_transformer_checkpoint_refuses_another_image_size(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    from gradscope.models.vision import _subject

    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3)
    config = gradscope.AnalyzeConfig(image_size=64, **SMALL_IMAGES)
    with pytest.raises(UsageError, match="`image_size=64`: vit takes 32 x 32 images only; leave out `image_size`"):
        _subject("vit", "checkpoint", model, lambda: model, 3, None, config.load_options(), {})
    assert _subject("vit", "checkpoint", model, lambda: model, 3, None, load_options(image_size=32, **SMALL_IMAGES),
                    {}).batches[0]["pixels"].shape == (2, 3, 32, 32)


def test_batch_norm_with_one_value_per_channel_is_a_usage_error(tmp_path):
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    config = gradscope.AnalyzeConfig(arch="resnet18", baselines=("pretrained",), batch_size=1, image_size=32,
                                     device="cpu")
    with pytest.raises(UsageError, match="batch normalization needs more than one value per channel .*; "
                                         r"raise `batch_size` \(or `image_size`\)"):
        gradscope.analyze(str(path), config)


@pytest.mark.parametrize("batch_size, image_size, fewest", [(2, 32, 2), (8, 64, None)])
def test_batch_norm_over_few_values_is_a_warning_given_once(tmp_path, batch_size, image_size, fewest):
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    config = gradscope.AnalyzeConfig(arch="resnet18", baselines=("pretrained", "scratch"), batch_size=batch_size,
                                     image_size=image_size, device="cpu")
    found = [f for f in gradscope.analyze(str(path), config).findings if f["kind"] == "small-batch-norm"]
    if fewest is None:  # layer4 sees 2 x 2 positions of 8 images: 32 values per channel
        assert found == []
    else:  # layer4 sees one position of 2 images
        assert len(found) == 1 and found[0]["variant"] == "pretrained"
        assert f"as few as {fewest} values per channel (at layer4.0.bn1)" in found[0]["message"]
        assert "10 of 20 batch-norm layers" in found[0]["evidence"]


def test_command_line_exit_codes_and_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["analyze", str(empty), "--arch", "resnet18", "--out", str(tmp_path / "out")]) == 3
    assert main(["analyze", str(tmp_path / "no-such"), "--out", str(tmp_path / "out")]) == 3
    assert main(["analyze", str(empty), "--arch", "resnet999", "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gradscope: error:")]
    assert len(errors) == 3
    assert "empty (0 bytes)" in errors[0] and "no such file or directory" in errors[1] and "resnet999" in errors[2]


# --- PEFT adapters: merged into their base model, measured with the head they were trained with --------------


def _save_lora_classifier(tmp_path, num_labels: int = 3):
    """A base BERT (no head) and a LoRA adapter trained on it for sequence classification, saved apart."""
    peft = pytest.importorskip("peft")
    from transformers import BertForSequenceClassification

    base = hm.save_small_bert(tmp_path / "base", head="BertModel")
    torch.manual_seed(1)
    model = peft.get_peft_model(BertForSequenceClassification.from_pretrained(base, num_labels=num_labels),
                                peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                p.normal_(std=0.2)  # as after training: the adapter changes the weights, the head is its own
    model.save_pretrained(tmp_path / "adapter")
    return base, tmp_path / "adapter"


def test_peft_adapter_is_merged_into_its_base_with_its_head(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import BertForSequenceClassification

    base, adapter = _save_lora_classifier(tmp_path)
    progress = []
    subject = load_subject(str(adapter), load_options(**SMALL), progress.append)
    want = peft.PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(base, num_labels=3),
                                          adapter).merge_and_unload().state_dict()
    got = subject.model.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    plain = BertForSequenceClassification.from_pretrained(base, num_labels=3).state_dict()
    assert not torch.equal(got["bert.encoder.layer.0.attention.self.query.weight"],
                           plain["bert.encoder.layer.0.attention.self.query.weight"])  # the adapter is in the weights
    assert all(p.requires_grad for p in subject.model.parameters())  # peft froze the base for training
    assert subject.objective == "cross-entropy" and "over 3 classes" in subject.inputs
    assert subject.meta["adapter"] == {"type": "LORA", "task_type": "SEQ_CLS", "base": str(base), "merged": True}
    assert not any("initialized at random" in line for line in progress)  # the head came from the adapter


def test_peft_adapter_head_size_is_read_from_the_head_alone(tmp_path):
    # modules_to_save may list other layers (here the pooler, 16 x 16) before the classifier in key order
    peft = pytest.importorskip("peft")
    from transformers import BertForSequenceClassification

    base = hm.save_small_bert(tmp_path / "base", head="BertModel")
    model = peft.get_peft_model(BertForSequenceClassification.from_pretrained(base, num_labels=3),
                                peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"],
                                                modules_to_save=["pooler.dense"]))
    model.save_pretrained(tmp_path / "adapter")
    subject = load_subject(str(tmp_path / "adapter"), load_options(**SMALL), lambda line: None)
    assert subject.model.classifier.out_features == 3


def test_peft_adapter_trained_on_the_backbone_is_applied_to_it(tmp_path):
    # Sentence-embedding recipe: AutoModel (no head) + LoRA, FEATURE_EXTRACTION, on a masked-LM checkpoint.
    peft = pytest.importorskip("peft")
    from transformers import AutoModel, BertForMaskedLM

    base = hm.save_small_bert(tmp_path / "base")  # BertForMaskedLM
    model = peft.get_peft_model(AutoModel.from_pretrained(base),
                                peft.LoraConfig(task_type="FEATURE_EXTRACTION", r=4, target_modules=["query"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    model.save_pretrained(tmp_path / "adapter")
    subject = load_subject(str(tmp_path / "adapter"), load_options(**SMALL), lambda line: None)
    want = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), tmp_path / "adapter").merge_and_unload()
    got = subject.model.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(got, want.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(got, BertForMaskedLM.from_pretrained(base).bert.encoder.layer[0].attention.self.query.weight)
    assert subject.objective == "masked-lm"


def test_peft_adapter_saved_with_the_models_config_keeps_its_problem_type(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import BertForSequenceClassification

    base = hm.save_small_bert(tmp_path / "base", head="BertModel")
    classifier = BertForSequenceClassification.from_pretrained(base, num_labels=4,
                                                               problem_type="multi_label_classification")
    model = peft.get_peft_model(classifier, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"]))
    model.save_pretrained(tmp_path / "adapter")
    assert load_subject(str(tmp_path / "adapter"), load_options(**SMALL),
                        lambda line: None).objective == "cross-entropy"  # adapters do not record problem_type
    classifier.config.save_pretrained(tmp_path / "adapter")  # config.json beside the adapter says it
    subject = load_subject(str(tmp_path / "adapter"), load_options(**SMALL), lambda line: None)
    assert subject.objective == "binary-cross-entropy" and subject.model.classifier.out_features == 4


def test_peft_adapter_on_a_classifier_with_another_number_of_labels(tmp_path):
    _, adapter = _save_lora_classifier(tmp_path, num_labels=5)
    hm.save_small_bert(tmp_path / "base", head="BertForSequenceClassification", num_labels=2)  # base: 2 labels
    subject = load_subject(str(adapter), load_options(**SMALL), lambda line: None)
    assert subject.model.classifier.out_features == 5 and "over 5 classes" in subject.inputs


def test_peft_adapter_of_a_model_whose_vocabulary_grew(tmp_path):
    # A pad token added before fine-tuning: the resized embeddings travel with the adapter (modules_to_save).
    peft = pytest.importorskip("peft")
    from transformers import GPT2LMHeadModel

    base = hm.save_tiny_gpt2(tmp_path / "base")
    model = GPT2LMHeadModel.from_pretrained(base)
    model.resize_token_embeddings(model.config.vocab_size + 2)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"],
                                                       modules_to_save=["wte"]))
    model.save_pretrained(tmp_path / "adapter")
    subject = load_subject(str(tmp_path / "adapter"), load_options(**SMALL), lambda line: None)
    assert subject.model.get_input_embeddings().num_embeddings == model.config.vocab_size
    assert subject.objective == "causal-lm"


def test_peft_adapter_for_a_head_without_an_objective_says_what_is_measured(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import BertForQuestionAnswering

    base = hm.save_small_bert(tmp_path / "base")  # BertForMaskedLM
    model = peft.get_peft_model(BertForQuestionAnswering.from_pretrained(base),
                                peft.LoraConfig(task_type="QUESTION_ANS", r=4, target_modules=["query"]))
    model.save_pretrained(tmp_path / "adapter")
    progress = []
    subject = load_subject(str(tmp_path / "adapter"), load_options(**SMALL), progress.append)
    assert subject.objective == "masked-lm"
    assert subject.meta["objective_note"].startswith("the adapter was trained for QUESTION_ANS, a head gradscope has "
                                                     "no objective for: measured with the base model's masked-lm head")
    assert subject.meta["objective_note"] in progress


def test_peft_adapter_from_the_command_line(tmp_path, capsys):
    _, adapter = _save_lora_classifier(tmp_path, num_labels=2)
    assert main(["analyze", str(adapter), "--out", str(tmp_path / "out"), "--batch-size", "2", "--seq-len", "16",
                 "--baselines", "pretrained,scratch"]) == 0
    out = capsys.readouterr().out
    assert f"model: LORA adapter (SEQ_CLS), merged into its base model {tmp_path / 'base'}" in out
    assert "objective cross-entropy" in out


def _adapter_folder(tmp_path, config: str, weights: str = "adapter_model.safetensors"):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(config)
    (folder / weights).write_bytes(b"")
    return folder


def test_peft_adapter_without_peft_installed_says_how_to_merge(tmp_path, monkeypatch):
    folder = _adapter_folder(tmp_path, '{"peft_type": "LORA", "base_model_name_or_path": "bert-base-uncased"}')
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ModelLoadError) as err:
        load_subject(str(folder), load_options(**SMALL), lambda line: None)
    message = str(err.value)
    assert message.startswith(f"{folder} holds a LORA adapter for bert-base-uncased, not a whole model: install peft")
    assert "merge_and_unload()" in message
    _one_clean_line(message)


@pytest.mark.parametrize("config, weights, says", [
    ('{"peft_type": "LORA"}', "adapter_model.safetensors", "names no base model"),
    ('{"peft_type": "LORA", "base_model_name_or_path": "bert-base-uncased"}', "adapter_model.bin",
     "reads adapter weights from safetensors only"),
    ('{"peft_type": "PROMPT_TUNING", "base_model_name_or_path": "gpt2"}', "adapter_model.safetensors",
     "adds virtual tokens to the input instead of changing weights"),
    ('{"peft_type": "LORA", "base_model_name_or_path": "/nonexistent/base"}', "adapter_model.safetensors",
     r"cannot load the base model '/nonexistent/base' that .*adapter_config.json names \(base_model_name_or_path\)"),
    ('{"peft_type": "LORA", "base_model_name_or_path": "someone/uncached-model"}', "adapter_model.safetensors",
     "set base_model_name_or_path to it"),
])
def test_peft_adapter_refusals(tmp_path, config, weights, says):
    pytest.importorskip("peft")
    folder = _adapter_folder(tmp_path, config, weights)
    with pytest.raises(ModelLoadError, match=says) as err:
        load_subject(str(folder), load_options(**SMALL), lambda line: None)
    _one_clean_line(str(err.value))


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_pickle_that_would_run_a_command_is_refused_naming_what_it_calls(tmp_path, capfd):
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _RunsACommand()}, path)
    with pytest.raises(ModelLoadError) as info:
        gradscope.analyze(str(path), gradscope.AnalyzeConfig(arch="resnet18", device="cpu"))
    message = str(info.value)
    _one_clean_line(message)
    assert f"refusing {path}: it needs pickled code to load (it refers to {os.system.__module__}.system)" in message
    assert "this must never run" not in capfd.readouterr().out


def test_a_config_with_fewer_layers_than_its_checkpoint_says_the_rest_went_unused(tmp_path, capsys):
    folder = hm.save_tiny_bert(tmp_path / "bert", layers=4)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["analyze", str(folder), "--baselines", "pretrained", "--batch-size", "2", "--seq-len", "16",
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"gradscope: warning: (\d+) tensor\(s\) of the checkpoint .* were not loaded into the model "
                     r"\(e\.g\. bert\.encoder\.layer\.2\.", err)
    report = gradscope.Report.load(tmp_path / "out")
    (finding,) = [f for f in report.findings if f["kind"] == "unused-weights"]
    per_layer = sum(1 for k in gradscope.Report.load(tmp_path / "out").params if k["name"].startswith(
        "bert.encoder.layer.0.") and k["variant"] == "pretrained")
    assert report.meta["unused_weights"]["count"] == 2 * per_layer  # layers 2 and 3, every tensor of each
    assert finding["severity"] == "warning" and finding["evidence"].startswith("not loaded: bert.encoder.layer.2.")


def test_a_config_asking_for_a_million_layers_is_refused_before_anything_is_built(tmp_path, capsys):
    folder = hm.save_tiny_bert(tmp_path / "bert", layers=2)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 1_000_000
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["analyze", str(folder), "--out", ""]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"gradscope: error: {folder}: its config asks for 1000000 layers; gradscope builds at most 1024 (check "
        "num_hidden_layers), or set GRADSCOPE_NO_SIZE_BOUNDS=1 if you really mean it")


def test_a_model_larger_than_the_machine_can_analyze_is_refused_before_its_weights_load(tmp_path, capsys,
                                                                                        monkeypatch):
    import gradscope.limits

    folder = hm.save_tiny_bert(tmp_path / "bert", layers=2)
    monkeypatch.setattr(gradscope.limits, "physical_memory", lambda: 2**20)  # a machine of 1 MiB
    assert main(["analyze", str(folder), "--out", ""]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(rf"gradscope: error: {re.escape(str(folder))}: its weights take [\d.e-]+ GiB, and analyzing "
                        r"it needs about [\d.e-]+ GiB, more than this machine's 0\.000977 GiB; use a smaller model "
                        r"or --dtype bfloat16, or set GRADSCOPE_NO_SIZE_BOUNDS=1 to try anyway", err), err
    monkeypatch.setenv("GRADSCOPE_NO_SIZE_BOUNDS", "1")
    assert main(["analyze", str(folder), "--baselines", "pretrained", "--batch-size", "2", "--seq-len", "16",
                 "--out", ""]) == 0
