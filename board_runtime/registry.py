"""Rows by name: the one kind of registry every table of the pipeline and the board runtime is (artifact formats,
model sources, built-in networks, board toolchains, decoders, sessions).

A row is registered once under its name (a second registration is a programming error); looking a name up that is
not there is a one-line error naming the valid names and, where one is close, the likely one. The board runtime
holds it because it may import nothing from the pipeline, and the pipeline's registries are the same class.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

Row = TypeVar("Row")
REGISTRIES: list["Registry"] = []  # every one made in this process, in order (the tests walk them)


def did_you_mean(name: object, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``, or nothing where none is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Mapping[str, Row], Generic[Row]):
    """``what`` names its rows in messages ("artifact kind", "decoder"); ``error`` is the exception a lookup of an
    unknown name raises (the pipeline's ConfigError, so that the command line shows one line)."""

    def __init__(self, what: str, error: type[Exception] = ValueError):
        self.what, self.error, self._rows = what, error, {}
        REGISTRIES.append(self)

    def register(self, name: str, row: Row) -> Row:
        if name in self._rows:
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._rows[name] = row
        return row

    def remove(self, name: str) -> Row:
        """Take a row out again (a test's or a plugin's own row)."""
        return self._rows.pop(name)

    def find(self, name: str) -> Row:
        """The row named ``name``; else ``error`` naming the valid names and the closest."""
        if name not in self._rows:
            raise self.error(f"unknown {self.what} '{name}'{did_you_mean(name, self._rows)}; valid: "
                             f"{', '.join(self._rows)}")
        return self._rows[name]

    def __getitem__(self, name: str) -> Row:
        return self._rows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._rows)})"
