"""Corpus, tokenizer, split and next-token windows."""

import numpy as np
import pytest

from geometry import data


def test_default_corpus_is_pydoc_topics():
    from pydoc_data.topics import topics

    documents = data.load_corpus()
    assert sum(map(len, documents)) > 0.95 * sum(map(len, topics.values()))  # paragraphs, stripped
    assert len(documents) > 1000


def test_split_is_by_document_and_order_free():
    documents = [f"document number {i} about topic {i % 7}" for i in range(2000)]
    train, validation = data.split_documents(documents, 0.1)
    assert set(train).isdisjoint(validation) and len(train) + len(validation) == 2000
    assert abs(len(validation) / 2000 - 0.1) < 0.025  # binomial SE 0.0067
    train_reversed, validation_reversed = data.split_documents(documents[::-1], 0.1)
    assert sorted(validation_reversed) == sorted(validation)


def test_vocabulary_cap_and_unknown_words():
    vocabulary = data.Vocabulary.build(["the cat sat on the mat , the end"], max_vocab=5)
    assert vocabulary.words == ("<unk>", "<eos>", "the", ",", "cat")  # by count, then alphabetical
    ids = vocabulary.encode(["The dog sat."])
    assert vocabulary.decode(ids) == ["the", "<unk>", "<unk>", "<unk>", "<eos>"]


def test_windows_are_shifted_by_one():
    inputs, targets = data.windows(np.arange(23, dtype=np.int32), 5, 30)
    assert inputs.shape == targets.shape == (4, 5)
    np.testing.assert_array_equal(targets, inputs + 1)
    np.testing.assert_array_equal(inputs.ravel(), np.arange(20))


def test_text_dataset_from_a_file_with_story_separators(tmp_path):
    stories = [f"story {i} : once upon a time there was a {w} who liked {w}s ." for i, w in enumerate(("cat", "dog", "fox", "owl") * 40)]
    path = tmp_path / "stories.txt"
    path.write_text("<|endoftext|>".join(stories), encoding="utf-8")
    dataset = data.text_dataset(path, context=8, max_vocab=12)
    assert sum(dataset.documents) == 160
    assert dataset.train_inputs.max() < len(dataset.vocabulary) == 12
    np.testing.assert_array_equal(dataset.train_inputs[:, 1:], dataset.train_targets[:, :-1])


def test_bad_corpora_are_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_corpus(tmp_path / "missing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="UTF-8"):
        data.load_corpus(binary)
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(f"paragraph {i} is short ." for i in range(40)), encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than one context window"):
        data.text_dataset(small, context=512)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        data.windows(np.array([0, 1, 7, 2]), 2, vocab_size=5)
