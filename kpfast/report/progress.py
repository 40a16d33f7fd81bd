"""Progress bars: tqdm (from the ``kpfast[cli]`` extra) when asked for and installed, else a silent
stand-in with the same interface, so callers never branch on it."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` if `enabled`, else an object that iterates `iterable` and
    ignores ``update``/``close``. Without tqdm installed the bar is simply not shown (bars are a
    convenience; every long run also logs its progress)."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ModuleNotFoundError:
            pass
        else:
            return tqdm(iterable, **kwargs)
    return _Silent(iterable)


class _Silent:
    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
