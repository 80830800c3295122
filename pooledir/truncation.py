"""Cut a long text before tokenizing it, without changing the tokens the encoder keeps.

A document is encoded from its first ``doc_maxlen`` tokens, but a tokenizer
builds all of a text's tokens (ids, offsets, strings) before it truncates:
a 20 MB one-line document took 2.7 GB and two minutes. :func:`clip_text`
hands the tokenizer a prefix that is long enough instead.

Why a prefix can be exact: every token covers at least one character that is
not whitespace, and tokenizers split words at whitespace before anything else
(BERT's WordPiece, SentencePiece's Metaspace, byte-level BPE), so the tokens
of a prefix that ends just before a run of whitespace are the first tokens of
the whole text. The prefix is grown (doubling) until it alone yields more
than ``max_tokens`` tokens, which proves the cut is past the kept tokens.
Text without whitespace (Chinese, Japanese, long URLs) is cut anywhere,
and such a cut is accepted only when the tokens kept from it and from a longer
prefix agree: twice as long, and at least ``LOOKAHEAD`` characters longer, so a
word cut short cannot hide that the whole word is one [UNK] (WordPiece turns a
word of more than 100 characters into one [UNK]; a piece of it into sub-words).
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: a whitespace character right after a non-whitespace one: the start of a whitespace run
_RUN_START = re.compile(r"(?<=\S)\s")
#: characters past a cut inside a word that must tokenize the same: more than WordPiece's longest word (100)
LOOKAHEAD = 128


def clip_text(text: str, max_tokens: int, head_ids: Callable[[str], list[int]], min_chars: int) -> str:
    """A prefix of ``text`` whose first ``max_tokens`` tokens are those of ``text`` itself.

    Parameters
    ----------
    text
        The document.
    max_tokens
        Tokens the encoder keeps (special tokens included).
    head_ids
        ``head_ids(s)``: the ids the encoder would see for ``s``, truncated to ``max_tokens + 1``.
    min_chars
        Texts up to this many characters are returned whole, without tokenizing anything.

    Returns
    -------
    ``text`` or a prefix of it; the prefix is longer than ``max_tokens`` tokens, so it is still truncated.
    """
    cut = max(1, min_chars)
    while cut < len(text):
        run = _RUN_START.search(text, cut, 2 * cut)
        if run is not None:
            prefix = text[: run.start()]
            if len(head_ids(prefix)) > max_tokens:
                return prefix
        else:
            head = head_ids(text[:cut])
            if len(head) > max_tokens and head == head_ids(text[: max(2 * cut, cut + LOOKAHEAD)]):
                return text[:cut]
        cut *= 2
    return text
