"""A rule-based English sentence splitter: one regex pass per document, tiny Python per boundary.

Why not NLTK/pysbd: punkt needs a download we cannot rely on, and pysbd is ~50x slower than this,
which would make sentence splitting the bottleneck of `prepare`. Sentence boundaries only need to
be good enough for SOP/NSP pairs, so the rules cover the common traps:
  - abbreviations ("Dr. Smith", "e.g. this", "U.S. law"), single-letter initials ("J. Smith"),
  - decimals and versions ("3.14", "v1.2.3") - no space after the dot, so never a candidate,
  - ellipses ("wait... then") - only a boundary when the next word starts a sentence,
  - closing quotes/brackets after the terminator stay with the sentence ('He said "no." Then').
Blank-line-separated paragraphs inside a document are hard boundaries; a single line break is not
(wrapped prose keeps its sentences; for line-oriented text use `format.text_documents=line`).
"""
from __future__ import annotations

import re
from typing import Iterator

ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr jr st mt ft vs etc al fig figs eq eqs no nos vol vols ch sec pp p
    ed eds rev gen col lt sgt capt cmdr gov sen rep pres jan feb mar apr jun jul aug sep sept oct
    nov dec mon tue wed thu fri sat sun inc ltd co corp dept univ assn bros approx est misc
    e.g i.e cf viz a.m p.m u.s u.k u.n ph.d b.a m.a b.sc m.sc op cit ibid resp incl max min
    """.split()
)

# A terminator run, optional closers, whitespace, then what looks like a sentence start.
# Group 1 is ``[.!?]+|\u2026`` written so that the pattern starts with one character class: `re`
# then skips to candidate characters in C instead of trying every position (2x faster scan).
_CANDIDATE = re.compile(
    r"""([.!?\u2026](?:(?<=\u2026)|(?<!\u2026)[.!?]*))(["'\u201d\u2019)\]]*)(\s+)(?=["'\u201c\u2018(\[]*[A-Z0-9\u00c0-\u00de])"""
)
_WORD_BEFORE = re.compile(r"""([\w.]+)$""")
_PARAGRAPH = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Sentences of one document, in order, stripped; never empty strings."""
    out: list[str] = []
    if "\n" not in text:  # no paragraph break possible: skip the split (most documents/lines)
        _split_paragraph(text, out)
        return out
    for para in _PARAGRAPH.split(text):
        _split_paragraph(para, out)
    return out


def _split_paragraph(text: str, out: list[str]) -> None:
    start = 0
    append = out.append
    for m in _CANDIDATE.finditer(text):
        dot, end, nxt = m.start(1), m.end(2), m.end(3)
        if text[dot] == "." and dot + 1 == m.end(1) and not _is_boundary_after_dot(text, dot):
            continue
        piece = text[start:end].strip()
        if piece:
            append(piece)
        start = nxt
    piece = text[start:].strip()
    if piece:
        append(piece)


def sentence_ends(text: str, start: int = 0) -> Iterator[int]:
    """Positions p >= start (ascending) where `split_sentences` ends a sentence: text[:p] ends one, text[p:] starts the next.

    The same rules in the same order as `split_sentences` (paragraph breaks, then terminator
    candidates inside each paragraph), so a text cut at any p splits into exactly the sentences of
    the whole: ``split_sentences(t[:p]) + split_sentences(t[p:]) == split_sentences(t)``. Used to cut
    over-long documents into pieces at the boundaries training sees (`pieces.py`); the hot path
    (`split_sentences`) keeps its own loop.

    `start` must be 0 or a non-whitespace character after whitespace: no candidate match (a
    terminator, closers, whitespace) or paragraph break can contain such a position, so a scan from
    there finds exactly the ends >= start of a scan from 0.
    """
    for m in _PARAGRAPH.finditer(text, start):
        yield from _ends_in(text, start, m.start())
        yield m.start()
        start = m.end()
    yield from _ends_in(text, start, len(text))


def _ends_in(text: str, start: int, stop: int) -> Iterator[int]:
    # finditer's endpos hides what follows the paragraph, as slicing it out would; the look-behinds
    # and `_is_boundary_after_dot` only look back to the terminator's own word (a paragraph starts
    # after a newline), so no offset shifts are needed.
    for m in _CANDIDATE.finditer(text, start, stop):
        dot = m.start(1)
        if text[dot] == "." and dot + 1 == m.end(1) and not _is_boundary_after_dot(text, dot):
            continue
        yield m.end(2)


def _is_boundary_after_dot(text: str, dot: int, _search=_WORD_BEFORE.search, _abbrev=ABBREVIATIONS) -> bool:
    w = _search(text, max(0, dot - 24), dot)
    if w is None:
        return True
    word = w.group(1)
    if len(word) == 1:
        if word.isalpha():
            return False  # an initial: "J. Smith", "A. B. Jones"
    elif "." not in word:
        return word.lower() not in _abbrev  # the common case: a plain word
    word = word.lower().rstrip(".")
    if word in _abbrev:
        return False
    if "." in word and all(len(p) == 1 for p in word.split(".")):
        return False  # dotted acronym like "U.S.A."
    return True
