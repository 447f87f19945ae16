"""Held-out problems as a fixed part of a problem space, not a seed.

A problem is held out when a hash of its question falls in one tenth of the range. Task
sets drawn with ``split="train"`` and sets drawn with ``split="heldout"`` can never share
a question, whatever their seeds and sizes: with seeds alone, 30,000 tiny-domain training
tasks shared 9 of 600 held-out problems. The tiny domain and reasoning-gym sources both
draw their splits with :func:`split_of`.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["HELDOUT_SHARE", "Split", "split_of"]

Split = Literal["all", "train", "heldout"]
HELDOUT_SHARE = 10  # one problem in this many is held out


def split_of(question: str) -> Split:
    """``heldout`` for the fixed tenth of the problem space kept out of training, else ``train``."""
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return "heldout" if int.from_bytes(digest, "big") % HELDOUT_SHARE == 0 else "train"
