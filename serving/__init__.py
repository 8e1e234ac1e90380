"""The gateway. What the rest of shipway may use of it (the benchmark, promotions, the ONNX
compiler) is exported here; everything else is internal to the gateway. serving imports no
`tasks` or `flows` module, so the gateway never loads Prefect or the training code."""

from typing import TYPE_CHECKING

from serving.models import Servable, servable
from serving.onnx import NULL_TOKEN, frame_feeds, session
from serving.registry_reader import Column, LoadedVersion, RegistryReader, load_sklearn
from serving.registry_tables import VersionRow
from serving.schema import json_rows, parse

if TYPE_CHECKING:
    from serving.server import running

__all__ = [
    "NULL_TOKEN",
    "Column",
    "LoadedVersion",
    "RegistryReader",
    "Servable",
    "VersionRow",
    "frame_feeds",
    "json_rows",
    "load_sklearn",
    "parse",
    "running",
    "servable",
    "session",
]


def __getattr__(name: str):
    """`running` imports the server (uvicorn, the app, serving.shadow) on first use: importing the
    package must not import serving.shadow, or `python -m serving.shadow` runs a second copy of it."""
    if name == "running":
        from serving.server import running

        return running
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
