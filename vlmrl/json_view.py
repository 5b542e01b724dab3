"""A read-only mapping over a JSON document, for typed views of files written once.

Subclasses add properties that name what readers use; the mapping stays the document
exactly as written (the audit hashes the files, and older files still load).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class JsonView(Mapping[str, Any]):
    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)
