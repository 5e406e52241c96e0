"""What the survey and method registries share.

A record names its functions as ``"module:function"`` (a :class:`Hook`), imported only when
called, so reading a registry imports nothing heavy: the workflow's input functions read them at
every DAG build.
"""
from __future__ import annotations

import importlib
from typing import Any, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class Hook:
    """A function named ``"package.module:function"``, imported when first called."""

    def __init__(self, target: str) -> None:
        self.target = target

    def resolve(self) -> Any:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Hook({self.target!r})"


class Registry(Generic[T]):
    """Records by name; an unknown name is an error that lists the known ones."""

    def __init__(self, kind: str, records: Mapping[str, T]) -> None:
        self.kind = kind
        self._records = dict(records)

    def get(self, name: str) -> T:
        if name not in self._records:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._records)}")
        return self._records[name]

    def names(self) -> list[str]:
        return sorted(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records
