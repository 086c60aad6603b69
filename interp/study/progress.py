"""How a study and its analyses report progress, drawn as bars by the CLI and shown by nothing else.

progress(description, total) is a context manager that yields update(n), called with the units done since the
last call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["Progress", "silent", "increments"]

Progress = Callable[[str, "int | None"], contextlib.AbstractContextManager[Callable[[int], None]]]
"""progress(description, total) -> a context manager yielding update(units done since the last call)."""


@contextlib.contextmanager
def silent(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """The Progress that shows nothing."""
    yield lambda n=1: None


def increments(update: Callable[[int], None]) -> Callable[[int, int], None]:
    """The behaviour harness's progress(done, total) as update(units done since the last call)."""
    done = [0]

    def step(n_done: int, total: int) -> None:
        update(n_done - done[0])
        done[0] = n_done

    return step
