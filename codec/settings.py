"""A codec's settings: a frozen dataclass that writes itself into a job spec and reads itself back.

Job specs outlive the code that wrote them, so reading is strict about what it does not know: a
field this version does not have is refused with an error that names it (a renamed field must not
silently fall back to its default on ``resume``), while a field the spec lacks takes its default
(a spec written before the field existed meant what that default does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from codec.errors import UnsupportedError


@dataclasses.dataclass(frozen=True)
class Settings:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], what: str = "settings") -> Self:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UnsupportedError(
                f"{what}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(this version knows {', '.join(cls.field_names()) or 'none'})"
            )
        return cls(**values)

    @classmethod
    def pick(cls, values: dict[str, Any]) -> Self:
        """The fields of ``values`` that this class has: for a flat dict that holds several
        codecs' settings side by side (a job spec's ``codec``)."""
        return cls(**{k: v for k, v in values.items() if k in cls.field_names()})
