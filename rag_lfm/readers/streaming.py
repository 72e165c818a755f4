"""Text out of token streams: whole characters, stop strings, and a generator over a decoding thread.

Shared by every reader (transformers, llama.cpp) and by ``rag-lfm serve``:

- :class:`TextAssembler` turns token ids into text pieces that never split a UTF-8
  character (a byte-level token can end inside one: its piece waits for the next token)
  and cuts the text before the first stop string; a piece that might be the start of a
  stop string is held back until it is clear that it is not;
- :func:`thread_stream` runs a decoding loop in a worker thread and yields the pieces it
  emits; closing the generator early (a client that left) tells the loop to stop.

Example:
    >>> asm = TextAssembler(lambda ids: "".join(chr(i) for i in ids), stops=["\\n\\n"])
    >>> [asm.push(i) for i in map(ord, "ab\\nc")]
    ['a', 'b', '', '\\nc']
    >>> asm.push(ord("\\n")), asm.push(ord("\\n")), asm.stopped, asm.text
    ('', '', True, 'ab\\nc')
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence


class TextAssembler:
    """Accumulates generated token ids into text, cut at the first stop string.

    Args:
        decode: token ids -> text (the tokenizer's decode).
        stops: strings that end the generation; the text returned excludes them.

    ``push(id)`` returns the new text that is safe to show (may be ``""``); once a stop
    string appears, ``stopped`` is True and ``text`` is final. ``flush()`` returns what
    was held back (a partial stop-string match or an incomplete character) at the end.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _held(self, text: str) -> int:
        """Characters at the end of ``text`` that could begin a stop string."""
        held = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:n]):
                    held = n
                    break
        return held

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the rest
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            text = text[:cut]
            self.text = text
            piece = text[self.emitted:]
            self.emitted = len(text)
            return piece
        self.text = text
        safe = len(text) - self._held(text)
        if safe <= self.emitted:
            return ""
        piece = text[self.emitted:safe]
        self.emitted = safe
        return piece

    def flush(self) -> str:
        """The text held back so far (at the end of generation, nothing more can complete it)."""
        if not self.stopped:
            self.text = self.decode(self.ids)
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece


def thread_stream(work: Callable[[Callable[[str], bool]], None]) -> Iterator[str]:
    """Run ``work(emit)`` in a thread and yield every non-empty piece it emits.

    ``emit(piece)`` returns True once the consumer has closed the generator, so the
    decoding loop can stop instead of generating for nobody. An exception raised in the
    worker is re-raised in the caller's thread.
    """
    pieces: queue.Queue = queue.Queue()
    failure: list[BaseException] = []
    cancelled = threading.Event()

    def emit(piece: str) -> bool:
        if piece:
            pieces.put(piece)
        return cancelled.is_set()

    def run() -> None:
        try:
            work(emit)
        except BaseException as exc:  # re-raised in the caller's thread below
            failure.append(exc)
        finally:
            pieces.put(None)

    thread = threading.Thread(target=run, daemon=True, name="rag-lfm-stream")
    thread.start()
    try:
        while True:
            piece = pieces.get()
            if piece is None:
                break
            yield piece
    finally:
        cancelled.set()
        thread.join()
    if failure:
        raise failure[0]
