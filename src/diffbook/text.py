"""Words to numbers: the word-level tokenizer of the text-to-image chapter.

:class:`Tokenizer` gives one id per lowercase word of the training prompts (here
the emoji names of :func:`diffbook.emoji.load_emoji`), with an id for padding and
one for unknown words.  Its ``encode`` returns the ``(tokens, mask)`` pair that
:class:`diffbook.nets.text_encoder.TextEncoder` and
:class:`diffbook.nets.text_encoder.TextToImage` read.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from .checks import positive_int


def _words(text: str) -> list[str]:
    """Lowercase words: maximal runs of letters and digits ("o’clock" -> "o", "clock")."""
    return re.findall(r"[^\W_]+", text.lower())


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError(
            "prompts must be a sequence of strings, got a single string (wrap it in a list)"
        )
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(
            f"prompts must be a sequence of strings, got {type(prompts).__name__}"
        ) from None
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(
            f"prompts must be a sequence of strings, found {type(bad[0]).__name__} {bad[0]!r}"
        )
    return prompts


class Tokenizer:
    """A word-level tokenizer: one id per known lowercase word.

    Words are maximal runs of letters and digits, lowercased, so punctuation
    and spaces only separate words.  Id :attr:`PAD` (0) is padding and id
    :attr:`UNK` (1) stands for any word outside the vocabulary; known words
    follow from id 2.

    Build it from training prompts with :meth:`fit`, or pass a word list.  The
    emoji names of :func:`diffbook.emoji.load_emoji` have at most 8 words (emoji 2.16), so
    ``max_len=8`` never truncates one; the first 320 names use 443 distinct
    words, most of them in a single name.
    """

    #: The id of padding, after a prompt's last word.
    PAD = 0
    #: The id of any word outside the vocabulary.
    UNK = 1
    SPECIALS = ("<pad>", "<unk>")

    def __init__(self, words):
        words = list(words)
        if not all(isinstance(w, str) and _words(w) == [w] for w in words):
            raise ValueError("words must be lowercase words of letters and digits")
        if len(set(words)) != len(words):
            raise ValueError("words must not repeat")
        self.vocab = list(self.SPECIALS) + words
        self._ids = {w: i for i, w in enumerate(self.vocab) if i >= len(self.SPECIALS)}

    @classmethod
    def fit(cls, prompts) -> Tokenizer:
        """A tokenizer whose vocabulary is every word of ``prompts``, most
        frequent first (ties alphabetically), so ids are deterministic."""
        counts = Counter(w for p in _check_prompts(prompts) for w in _words(p))
        return cls(sorted(counts, key=lambda w: (-counts[w], w)))

    @property
    def vocab_size(self) -> int:
        """Number of ids, padding and unknown included (the embedding table's size)."""
        return len(self.vocab)

    def encode(self, prompts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and a validity mask, both of shape ``(len(prompts), max_len)``.

        Args:
          prompts: a sequence of ``N`` strings (not a single string).
          max_len: the number of positions per prompt, an int ``>= 1``.

        Returns:
          ``(tokens, mask)``, both of shape ``(N, max_len)``.  ``tokens`` is
          ``int32``: word ids from the left, :attr:`UNK` for unknown words,
          :attr:`PAD` after the last word; prompts longer than ``max_len`` words
          are cut to their first ``max_len``.  ``mask`` is ``bool``, True on real
          words.  An empty prompt gives a row of padding with an all-False mask;
          a model that attends over tokens must cope with that (for instance
          with a learned "null" token).

        Raises:
          TypeError: ``prompts`` is not a sequence of strings, or ``max_len`` is
            not an int.
          ValueError: ``max_len < 1``.
        """
        prompts = _check_prompts(prompts)
        max_len = positive_int(max_len, "max_len")
        tokens = np.full((len(prompts), max_len), self.PAD, np.int32)
        for row, prompt in enumerate(prompts):
            ids = [self._ids.get(w, self.UNK) for w in _words(prompt)][:max_len]
            tokens[row, : len(ids)] = ids
        return tokens, tokens != self.PAD

    def decode(self, tokens):
        """Words joined by spaces, padding skipped, unknown words as ``<unk>``.

        ``tokens`` of shape ``(N, L)`` gives a list of ``N`` strings; shape
        ``(L,)`` gives one string.
        """
        arr = np.asarray(tokens)
        if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"tokens must be an integer array of shape (L,) or (N, L), "
                f"got dtype {arr.dtype} and shape {arr.shape}"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(
                f"tokens must lie in 0..{self.vocab_size - 1}, "
                f"got values in {arr.min()}..{arr.max()}"
            )
        rows = [" ".join(self.vocab[i] for i in row if i != self.PAD) for row in np.atleast_2d(arr)]
        return rows[0] if arr.ndim == 1 else rows

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
