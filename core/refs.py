"""Model references as users type them: NAME@ALIAS or NAME/VERSION (one parser, one message)."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import RegistryError


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str, what: str = "model reference") -> ModelRef:
        """`churn@Production` or `churn/3`; the last separator wins, so names may hold '/' or '@'."""
        at, slash = text.rfind("@"), text.rfind("/")
        sep = "@" if at > slash else "/"
        name, found, which = text.rpartition(sep)
        if not found or not name or not which or (sep == "/" and not which.isdigit()):
            raise RegistryError(f"{what} must be NAME@ALIAS or NAME/VERSION (e.g. churn@Production), got {text!r}")
        return cls(name, alias=which) if sep == "@" else cls(name, version=which)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"
