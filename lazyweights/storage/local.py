"""Local files: ``preadv`` straight into the caller's buffer, no staging copy and no lock."""

from __future__ import annotations

import os

__all__ = ["pread_into"]


def pread_into(fd: int, offset: int, view: memoryview) -> int:
    """Fill the byte view ``view`` from ``fd`` at ``offset`` with ``preadv``; the count read (short only at EOF)."""
    done = 0
    while done < view.nbytes:  # preadv may return short counts; loop until filled or EOF
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done
