"""A small English corpus, a word-level tokenizer and next-token windows.

The default corpus is CPython's own documentation topics (`pydoc_data.topics`, ~465 k
characters of English in 79 topics, split into paragraphs), present on every Python install,
so nothing is downloaded. Any UTF-8 text file can be used instead (`load_corpus(path)`): documents are
separated by `<|endoftext|>` when the file contains it (the TinyStories convention), by
blank lines otherwise.

Tokens are lower-cased words, numbers and single punctuation marks. The vocabulary is
built from the training documents only, most frequent first (ties alphabetical), capped
at `max_vocab` entries including the specials `<unk>` (rare or unseen words) and `<eos>`
(end of document). The train/validation split is by document and depends only on each
document's text (a hash), so it never changes when documents are added or reordered.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np

UNK, EOS = "<unk>", "<eos>"
SPECIALS = (UNK, EOS)
_TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")
_STORY_SEPARATOR = "<|endoftext|>"


def load_corpus(path: str | Path | None = None) -> list[str]:
    """The documents of a corpus: pydoc_data.topics (default) or a UTF-8 text file."""
    if path is None:
        from pydoc_data.topics import topics

        # a topic is one long page (79 in all); its paragraphs are the documents, so a split
        # by document gets close to the asked-for fraction
        documents = [paragraph for name in sorted(topics) for paragraph in _paragraphs(topics[name])]
        source = "pydoc_data.topics"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"corpus file {path} is not UTF-8 text ({error})") from error
        separator = _STORY_SEPARATOR if _STORY_SEPARATOR in text else None
        documents = text.split(separator) if separator else _paragraphs(text)
        source = str(path)
    documents = [d.strip() for d in documents if d.strip()]
    if not documents:
        raise ValueError(f"corpus {source} is empty: no non-blank documents")
    return documents


def _paragraphs(text: str) -> list[str]:
    return re.split(r"\n\s*\n", text)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def split_documents(documents: list[str], validation_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Deterministic split by document: a document is validation iff its text hashes below the fraction."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    train, validation = [], []
    for document in documents:
        digest = int.from_bytes(hashlib.sha256(document.encode()).digest()[:8], "big")
        (validation if digest / 2**64 < validation_fraction else train).append(document)
    if not train or not validation:
        raise ValueError(f"{len(documents)} document(s) cannot be split into non-empty train and validation sets; "
                         "the corpus needs more documents")
    return train, validation


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # id -> word; ids 0, 1 are <unk>, <eos>

    @classmethod
    def build(cls, documents: list[str], max_vocab: int) -> Vocabulary:
        if max_vocab < len(SPECIALS) + 1:
            raise ValueError(f"max_vocab must be at least {len(SPECIALS) + 1}, got {max_vocab}")
        counts = collections.Counter(token for document in documents for token in tokenize(document))
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return cls(SPECIALS + tuple(ranked[: max_vocab - len(SPECIALS)]))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, documents: list[str]) -> np.ndarray:
        """One int32 stream: each document's token ids followed by <eos>."""
        index = {word: i for i, word in enumerate(self.words)}
        unk, eos = index[UNK], index[EOS]
        ids = []
        for document in documents:
            ids.extend(index.get(token, unk) for token in tokenize(document))
            ids.append(eos)
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids) -> list[str]:
        return [self.words[i] for i in np.asarray(ids).ravel()]


def windows(stream: np.ndarray, context: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping next-token windows: inputs (N, context) and targets (N, context), targets
    the inputs shifted by one token."""
    stream = np.asarray(stream)
    if stream.ndim != 1:
        raise ValueError(f"token stream must be 1-D, got shape {stream.shape}")
    if stream.size and (stream.min() < 0 or stream.max() >= vocab_size):
        bad = stream[(stream < 0) | (stream >= vocab_size)]
        raise ValueError(f"{bad.size} token id(s) outside the vocabulary [0, {vocab_size}), e.g. {int(bad[0])}")
    count = (len(stream) - 1) // context
    if count < 1:
        raise ValueError(f"{len(stream)} tokens are fewer than one context window of {context} + 1 tokens")
    inputs = stream[: count * context].reshape(count, context)
    targets = stream[1 : count * context + 1].reshape(count, context)
    return inputs, targets


@dataclasses.dataclass(frozen=True)
class TextData:
    vocabulary: Vocabulary
    train_inputs: np.ndarray  # (N_train, context) int32
    train_targets: np.ndarray  # (N_train, context)
    validation_inputs: np.ndarray  # (N_val, context)
    validation_targets: np.ndarray
    documents: tuple[int, int]  # (train, validation) document counts
    unknown_fraction: float  # of training tokens mapped to <unk>


def text_dataset(path: str | Path | None = None, *, context: int = 64, max_vocab: int = 2048,
                 validation_fraction: float = 0.1) -> TextData:
    """Corpus → vocabulary (from the training documents) → next-token windows for both splits."""
    train_docs, validation_docs = split_documents(load_corpus(path), validation_fraction)
    vocabulary = Vocabulary.build(train_docs, max_vocab)
    train_stream, validation_stream = vocabulary.encode(train_docs), vocabulary.encode(validation_docs)
    train_inputs, train_targets = windows(train_stream, context, len(vocabulary))
    validation_inputs, validation_targets = windows(validation_stream, context, len(vocabulary))
    return TextData(vocabulary, train_inputs, train_targets, validation_inputs, validation_targets,
                    (len(train_docs), len(validation_docs)), float(np.mean(train_stream == 0)))
