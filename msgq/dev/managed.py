"""The one `with` protocol of the dev stack's process groups: start on entry (stopping whatever
did start if that fails part-way), stop on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Managed:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
