from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pooledir.truncation import clip_text

# pieces that stress the cut: words, sub-words, punctuation, whitespace runs, zero-width and CJK characters
PIECES = [
    "cell",
    "cancer",
    "unbelievable",
    "vitamin,",
    "a.b",
    ".",
    " ",
    "   ",
    "\n",
    "\t \n",
    "\u200b",
    "细胞",
    "x" * 120,
]


def full_ids(encoder, text: str) -> list[int]:
    """The reference: tokenize the whole text, then truncate (what the encoder did before clipping)."""
    return encoder._tokenize([text], False, encoder.settings.doc_maxlen)["input_ids"][0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.sampled_from(PIECES), min_size=0, max_size=400),
    no_space=st.booleans(),
    min_chars=st.integers(1, 400),
)
# found by a CI run: cut at 64 and 128 characters, the 120-character word is sub-words; whole, one [UNK]
@example(pieces=["unbelievable", "cell", "cell", "vitamin,", "x" * 120], no_space=False, min_chars=1)
def test_clipped_text_keeps_the_same_tokens(tiny_encoder, pieces, no_space, min_chars):
    """Whatever the first cut, the clipped text must give exactly the whole text's kept tokens."""
    text = "".join(p for p in pieces if not (no_space and p.isspace()))
    m = tiny_encoder.settings.doc_maxlen

    def head(s: str) -> list[int]:
        return tiny_encoder._tokenize([s], False, m + 1)["input_ids"][0]

    clipped = clip_text(text, m, head, min_chars=min_chars)
    assert text.startswith(clipped)
    assert full_ids(tiny_encoder, clipped) == full_ids(tiny_encoder, text)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=0, max_size=900))
def test_encoder_ids_and_truncation_flags_match_whole_text_tokenization(tiny_encoder, pieces):
    text = "".join(pieces)
    ids, truncated = tiny_encoder._document_ids([text])
    assert ids[0] == full_ids(tiny_encoder, text)
    untruncated = tiny_encoder._tokenize([text], False, 10**6)["input_ids"][0]
    assert truncated[0] == (len(untruncated) > tiny_encoder.settings.doc_maxlen)


def test_short_texts_are_not_tokenized_to_be_clipped():
    calls = []
    assert clip_text("a b c", 4, lambda s: calls.append(s) or [0] * 9, min_chars=100) == "a b c"
    assert calls == []


def test_the_cut_is_before_a_whitespace_run_and_past_the_kept_tokens():
    text = "w " * 1000  # one token per word: 1000 tokens
    calls = []

    def head(s: str) -> list[int]:
        calls.append(s)
        return list(range(min(len(s.split()), 11)))

    clipped = clip_text(text, 10, head, min_chars=8)
    assert text.startswith(clipped) and clipped.endswith("w") and len(clipped.split()) > 10
    assert len(clipped) < 64  # grown by doubling from 8 characters, not the whole text
