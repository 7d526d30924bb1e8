"""Inputs: the built-in corpus or a text file for text models; images or a seeded batch for vision.

Text is packed, as in language-model pretraining: the sentences are tokenized
into one stream, and sample ``i`` of batch ``b`` is the window of
``seq_len - specials`` tokens starting at ``(b * batch_size + i) * window``
(the stream repeats when it runs out), with the tokenizer's special tokens
around it. Every sequence is full length, so no padding enters the gradient.

Sentence pairs, for a sentence encoder trained contrastively (see :mod:`.sentence`): each sentence
(each line of ``text``) split at its middle word, its first half the anchor and its second half the
positive. The two halves of one sentence share its topic and those of other sentences do not: what an
encoder trained on sentence pairs (question and answer, title and body) should find easy to match.

Masked-LM masking is seeded: 15% of the non-special positions of each
sequence (at least one) become the mask token; the labels are the original
ids there and -100 elsewhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import torch

from ..errors import UsageError
from ..limits import MAX_TEXT_BYTES, bound, read_bounded
from .common import LoadOptions

MASK_FRACTION = 0.15
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def builtin_corpus() -> list[str]:
    """The sentences of gradscope's built-in English corpus (package data)."""
    text = resources.files("gradscope").joinpath("data/corpus.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def check_input_paths(text_file: Optional[str], image_directory: Optional[str]) -> None:
    """Refuse, before a model is loaded, a text file that cannot be read or has no text, and a directory that
    is none or holds no image: what they hold is read later, by the model's own tokenizer or preprocessing."""
    if text_file is not None:
        read_text_file(text_file)
    if image_directory is not None:
        image_paths(image_directory)


def read_text_file(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file; UsageError if it cannot be read or has no text."""
    try:
        raw = read_bounded(path, "`text`", bound(MAX_TEXT_BYTES, "GRADSCOPE_MAX_TEXT_MB"), "GRADSCOPE_MAX_TEXT_MB")
        lines = raw.decode("utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"`text={path!r}`: cannot read it ({exc.strerror or exc}); give a UTF-8 text file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"`text={path!r}`: cannot read it ({exc}); give a UTF-8 text file") from None
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise UsageError(f"`text={path!r}`: the file has no text; give a file with at least one line")
    return lines


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (``[CLS]`` and ``[SEP]`` for BERT, none for GPT-2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain):])
    return [], []


def token_windows(tokenizer, texts: list[str], n: int, seq_len: int) -> tuple[torch.Tensor, float]:
    """``n`` packed sequences of exactly ``seq_len`` token ids, special tokens included, and how many times
    they go through the text's tokens (above 1: the text is shorter than the batch and repeats)."""
    prefix, suffix = special_tokens_around(tokenizer)
    specials = len(prefix) + len(suffix)
    window = seq_len - specials
    if window < 1:
        raise UsageError(f"`seq_len={seq_len}` leaves no room for text beside {specials} special tokens")
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not stream:
        raise UsageError("the text gave no tokens")
    rows = []
    for i in range(n):
        start = (i * window) % len(stream)
        ids = [stream[(start + k) % len(stream)] for k in range(window)]
        rows.append(prefix + ids + suffix)
    return torch.tensor(rows, dtype=torch.long), n * window / len(stream)


# The pairing sentence_halves makes, in words (for the objective's note).
PAIRING = "each sentence split at its middle word, its first half the anchor and its second half the positive"


def sentence_halves(texts: list[str]) -> list[tuple[str, str]]:
    """Each text of two words or more split at its middle word: (first half, second half).

    >>> sentence_halves(["The train left the station late.", "Hello"])
    [('The train left', 'the station late.')]
    """
    pairs = []
    for text in texts:
        words = text.split()
        if len(words) >= 2:
            middle = len(words) // 2
            pairs.append((" ".join(words[:middle]), " ".join(words[middle:])))
    return pairs


def pair_batches(pairs: list[tuple[str, str]], batch_size: int, batches: int):
    """``batches`` lists of ``batch_size`` consecutive pairs (the pairs repeat when they run out), and how many
    times they go through the pairs (above 1: the text is shorter than the batches).

    The other pairs of a batch are each pair's negatives: a batch needs at least two, all different.
    """
    if batch_size < 2:
        raise UsageError(f"`batch_size={batch_size}`: an in-batch contrastive loss needs at least 2 sentence pairs "
                         "in a batch (each pair's negatives are the others)")
    if len(pairs) < batch_size:
        raise UsageError(f"`batch_size={batch_size}`: the text has {len(pairs)} sentences of two words or more to "
                         f"pair, and a batch needs {batch_size} different ones; give more lines or a smaller "
                         "`batch_size`")
    n = batch_size * batches
    chosen = [pairs[i % len(pairs)] for i in range(n)]
    return [chosen[b * batch_size:(b + 1) * batch_size] for b in range(batches)], n / len(pairs)


def random_token_ids(vocab_size: int, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """Seeded token ids for a model that has no tokenizer (ids 0 to 4 are left out: usually special)."""
    generator = torch.Generator().manual_seed(seed)
    low = min(5, vocab_size - 1)
    return torch.randint(low, vocab_size, (n, seq_len), generator=generator)


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, seed: int):
    """Seeded masked-LM corruption: returns (masked input ids, labels with -100 where not masked)."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(input_ids.shape, generator=generator)
    scores[special] = 2.0  # never masked
    chosen = scores < MASK_FRACTION
    # At least one masked position per sequence: its lowest-scoring ordinary token.
    chosen[torch.arange(input_ids.shape[0]), scores.argmin(dim=1)] = True
    chosen &= ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    masked = torch.where(chosen, torch.full_like(input_ids, mask_id), input_ids)
    return masked, labels


def image_paths(directory: str) -> list[Path]:
    """The JPEG/PNG files of a directory in name order; UsageError if it is no directory or holds none."""
    root = Path(directory)
    if not root.is_dir():
        problem = "not a directory" if root.exists() else "no such directory"
        raise UsageError(f"`images={directory!r}`: {problem}; give a directory of JPEG or PNG files")
    try:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise UsageError(f"`images={directory!r}`: cannot list it ({exc.strerror or exc}); "
                         "give a directory of JPEG or PNG files") from None
    if not files:
        raise UsageError(f"`images={directory!r}`: no .jpg, .jpeg or .png files in it")
    return files


def image_files(directory: str, n: int) -> list[Path]:
    """The first ``n`` JPEG/PNG files of a directory in name order (repeated if there are fewer)."""
    files = image_paths(directory)
    return [files[i % len(files)] for i in range(n)]


def load_images(directory: str, n: int, transform, preprocessing: str) -> tuple[torch.Tensor, str]:
    """``n`` images from ``directory`` through ``transform`` (the weights' own preprocessing, named by
    ``preprocessing``), stacked, and where they came from in words: a batch larger than the directory
    repeats its files, and says so."""
    from PIL import Image, UnidentifiedImageError

    paths = image_files(directory, n)
    tensors = []
    for path in paths:
        try:
            with Image.open(path) as image:
                tensors.append(transform(image.convert("RGB")))
        except Image.DecompressionBombError:  # a small file that decodes to billions of pixels
            raise UsageError(f"`images`: {path} has more than {2 * Image.MAX_IMAGE_PIXELS} pixels, past PIL's bound "
                             "against decompression bombs; remove it or give a smaller image") from None
        except (OSError, UnidentifiedImageError) as exc:
            raise UsageError(f"`images`: cannot read {path} ({exc}); remove it or convert it to PNG/JPEG")
    files = len(set(paths))
    if files < n:
        where = f"{n} images from the {files} file{'s' if files > 1 else ''} in {directory} (repeated; {preprocessing})"
    else:
        where = f"{n} images from {directory} ({preprocessing})"
    return torch.stack(tensors), where


def synthetic_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """A seeded batch of standard-normal images, i.e. already in normalized pixel space."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, channels, size, size), generator=generator)


def random_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Class labels drawn uniformly with the seed (a documented target, the same for every variant)."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, num_classes, (n,), generator=generator)


def random_targets(n: int, seed: int) -> torch.Tensor:
    """Standard-normal regression targets drawn with the seed, for a one-output regression head."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn((n,), generator=generator)


def unknown_fraction(ids: torch.Tensor, special: torch.Tensor, unk_id) -> float:
    """The share of the text's tokens that are the unknown token (specials such as ``[CLS]`` left out).

    A tokenizer that does not know the text's words (or one transformers made up because no
    tokenizer files were saved) reads most of it as ``[UNK]``: a batch of one repeated token.
    """
    if unk_id is None:
        return 0.0
    unknown = ids == unk_id
    text = ~special | unknown  # tokenizers count [UNK] among their special tokens
    return float(unknown.sum()) / max(int(text.sum()), 1)


def refuse_text_options(options: LoadOptions) -> None:
    """An image model would ignore ``text`` and ``seq_len``: a usage error, not a silent default."""
    _refuse({"text": options.text, "seq_len": options.seq_len},
            "text models; this is an image classifier (use `images`, `image_size`)")


def refuse_image_options(options: LoadOptions) -> None:
    """A text model would ignore ``images`` and ``image_size``: a usage error, not a silent default."""
    _refuse({"images": options.images, "image_size": options.image_size},
            "vision models; this is a text model (use `text`, `seq_len`)")


def _refuse(given: dict, what: str) -> None:
    for option, value in given.items():
        if value is not None:
            raise UsageError(f"`{option}` is for {what}")


def texts_for(text_file: Optional[str]) -> tuple[list[str], str]:
    """The sentences to use and a description of where they came from."""
    if text_file:
        return read_text_file(text_file), f"text file {text_file}"
    return builtin_corpus(), "built-in corpus"
