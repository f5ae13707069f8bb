"""Cut a document longer than `max_document_chars` into pieces, streaming, at sentence (else whitespace) ends.

A long document is not dropped: it becomes several documents of at most `max_chars` characters.
Each cut is at the last place within the limit where `sentences.sentence_ends` ends a sentence (so
the pieces split into the same sentences training would have seen), else at the last whitespace
character (inside an over-long sentence). Both keep every token: a sentence end lies before
whitespace after a terminator, and the BERT pre-tokenizer splits words at `WHITESPACE` anyway.
Only a run of more than `max_chars` characters without any whitespace cannot be cut; it is dropped
from the document (reported as a `Piece` without text, so the caller counts it) and the text
around it is kept.

`feed` takes the text as it arrives and returns the pieces already decided; it cuts only while
it holds more than ``max_chars + LOOKAHEAD`` characters, so every cut sees the same window
whatever the feed sizes are (the pieces depend on the text alone) and memory stays at about
``max_chars + LOOKAHEAD`` plus one fed chunk, however long the document.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from pretrain.prepare.sentences import sentence_ends

# Characters a cut may remove: whitespace at which the BERT pre-tokenizer splits words and which its
# normalizer keeps. Python's other whitespace (\x0b \x0c \x1c-\x1f \x85) are control characters the
# normalizer deletes, joining their neighbours into one word: cutting there would change the tokens.
WHITESPACE = "\t\n\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_LAST_WS = re.compile(f".*[{WHITESPACE}]", re.DOTALL)  # greedy: backtracks from the end to the last one
# Last resort before dropping: any whitespace at all (a form feed may join two words' tokens, but
# loses no text). A run is uncuttable only without any.
_LAST_SPACE = re.compile(r".*\s", re.DOTALL)
_SPACE = re.compile(r"\s")
# Characters past the limit a sentence end may need to be recognised (its whitespace and the next
# sentence's opening quotes/capital); a rarer longer tail only moves the cut to an earlier end.
LOOKAHEAD = 256


# The last sentence end is looked for in the last _TAIL characters before the limit first: scanning
# the whole window for every cut made the main process read long documents at ~8 MB/s.
_TAIL = 8192
_WORD_START = re.compile(r"(?<=\s)\S")


def last_sentence_end(window: str, limit: int) -> int:
    """The largest sentence end p <= limit in `window` (`sentences.sentence_ends`), 0 if none."""
    m = _WORD_START.search(window, limit - min(_TAIL, limit // 4), limit)
    start = m.start() if m else 0
    while True:
        end = 0
        for p in sentence_ends(window, start):
            if p > limit:
                break
            end = p
        if end or not start:
            return end
        start = 0  # none near the limit: look at the whole window


@dataclass(frozen=True)
class Piece:
    text: Optional[str]  # None: a run of more than max_chars characters without whitespace, dropped
    newlines: int        # "\n" characters in the document before this piece (its line offset in a text file)


class PieceCutter:
    """Incremental cutter for one document: ``feed(text)...`` then ``finish()``; both return pieces in order."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self._buf = ""          # undecided text; never starts with WHITESPACE
        self._newlines = 0      # "\n" consumed before _buf
        self._dropping = False  # inside an over-long run whose start was already reported
        self._fed: list[str] = []  # text after _buf, joined only when a cut is due (small feeds stay linear)
        self._fed_chars = 0

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        if self._dropping:
            m = _SPACE.search(text)
            if m is None:
                return out  # the run goes on
            self._dropping = False
            text = text[m.start():]
        self._fed.append(text)
        self._fed_chars += len(text)
        if len(self._buf) + self._fed_chars > self.max_chars + LOOKAHEAD:
            self._take_fed()
            while len(self._buf) > self.max_chars + LOOKAHEAD:
                self._cut(out)  # ends with an empty _buf if it starts dropping a run
        return out

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        self._take_fed()
        while len(self._buf) > self.max_chars:
            self._cut(out)
        if self._buf.strip():
            out.append(Piece(self._buf, self._newlines))
        self._buf, self._dropping = "", False
        return out

    def _take_fed(self) -> None:
        if self._fed:
            self._set(self._buf + "".join(self._fed))
            self._fed.clear()
            self._fed_chars = 0

    def _set(self, text: str, consumed: str = "") -> None:
        """_buf = text without leading whitespace, counting the newlines of what is left behind."""
        rest = text.lstrip(WHITESPACE)
        self._newlines += consumed.count("\n") + text.count("\n", 0, len(text) - len(rest))
        self._buf = rest

    def _cut(self, out: list[Piece]) -> None:
        buf, limit = self._buf, self.max_chars
        end = last_sentence_end(buf[: limit + LOOKAHEAD], limit)
        if end == 0:
            m = _LAST_WS.match(buf, 0, limit + 1) or _LAST_SPACE.match(buf, 0, limit + 1)
            end = m.end() - 1 if m else 0
        if end > 0:
            piece = buf[:end]
            if piece.strip():
                out.append(Piece(piece, self._newlines))
            self._set(buf[end:], piece)
            return
        # No whitespace at all in the first limit + 1 characters: the run starting here is longer
        # than a document may be and cannot be cut. Report it once and drop it, up to the next space.
        out.append(Piece(None, self._newlines))
        m = _SPACE.search(buf, limit + 1)
        if m is None:
            self._buf, self._dropping = "", True
        else:
            self._set(buf[m.start():])  # a run holds no "\n"
