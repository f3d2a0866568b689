"""Turns fuzzer bytes into structured choices, for the targets that build their input from a
grammar instead of parsing it (``*_grammar``, ``native_*``).

Our own reader rather than ``atheris.FuzzedDataProvider``: the corpus files of those targets
must mean the same thing in the pytest replay (where atheris may be missing) and after an
atheris upgrade. Reading past the end yields zeros, so every byte string is a valid input and
a short one means "the first choice everywhere".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

# Integers worth trying as dimensions, sizes and values: the edges of every integer width.
EDGES = (0, 1, 2, 3, 4, 7, 8, 16, 63, 64, 65, 255, 256, 2**15, 2**16, 2**31 - 1, 2**31, 2**32, 2**40,
         2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -2, -(2**31), -(2**63), -(2**63) - 1)


class Provider:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        pos = self.pos
        if pos >= len(self.data):
            return 0
        self.pos = pos + 1
        return self.data[pos]

    def uint(self, nbytes: int) -> int:
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return int.from_bytes(chunk, "little")

    def below(self, n: int) -> int:
        """0 <= value < n (n >= 1), from as few bytes as n needs."""
        if n <= 1:
            return 0
        nbytes = (max(n - 1, 1).bit_length() + 7) // 8
        return self.uint(nbytes) % n

    def coin(self, one_in: int = 2) -> bool:
        """True with probability about 1/one_in."""
        return self.below(one_in) == 0

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    def integer(self) -> int:
        """An edge value (or its neighbour), a small number, or 8 raw bytes as a signed int64."""
        mode = self.below(4)
        if mode == 0:
            return self.pick(EDGES) + self.below(3) - 1
        if mode == 1:
            return self.below(10)
        if mode == 2:
            return self.uint(8) - 2**63
        return self.pick(EDGES)

    def text(self, max_len: int = 8) -> str:
        raw = self.take(self.below(max_len + 1))
        return raw.decode("latin-1")  # every byte a character: always valid text
