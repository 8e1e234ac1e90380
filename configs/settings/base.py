"""What every section shares: an unknown key is an error, and a field holding a local path says so
in its type, so that loading a profile makes it absolute without a list of such fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Local:
    """Marks a field of local paths: `absolute` turns one relative to `cwd` into an absolute one."""

    absolute: Callable[[str, Path], str]

    def resolve(self, value: Any, cwd: Path) -> Any:
        if isinstance(value, list):
            return [self.absolute(item, cwd) for item in value]
        return self.absolute(value, cwd)


def absolute_path(location: str, cwd: Path) -> str:
    if not location or "://" in location:
        return location
    return str((cwd / location).resolve())


def absolute_sqlite(uri: str, cwd: Path) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + str((cwd / uri[len(prefix) :]).resolve())


LocalPath = Annotated[str, Local(absolute_path)]  # a folder, or a URL (s3://...) left as it is
LocalPaths = Annotated[list[str], Local(absolute_path)]
SqliteUrl = Annotated[str, Local(absolute_sqlite)]  # sqlite:///relative/path; any other URL left as it is


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def resolved(self, cwd: Path) -> Self:
        """A copy with the relative paths of its local-path fields made absolute against `cwd`."""
        update = {
            key: marker.resolve(getattr(self, key), cwd)
            for key, field in type(self).model_fields.items()
            for marker in field.metadata
            if isinstance(marker, Local)
        }
        return self.model_copy(update=update)
