"""MLflow's server with its UI opening in the model-training view: `mlflow server --app-name shipway`.

MLflow 3.17's UI picks GenAI or model training from one browser-wide choice (GenAI until the
user picks), not from an experiment's `mlflow.experimentKind` tag, so every experiment and run
of shipway opened on GenAI's empty Traces pages. This app is MLflow's own ASGI app with one
change: the UI's page sets that choice to model training when the browser has made none, so a
user's own choice (the GenAI / Model training switch) still wins. Registered as the `mlflow.app`
entry point `shipway` (pyproject.toml), MLflow's documented way to extend its server.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

# The UI keeps its choice in localStorage under this key, JSON-encoded (MLflow 3.17.2's
# useLocalStorage: `${key}_v${version}`); its values are "genai" and "machine_learning".
WORKFLOW_KEY = "mlflow.workflowType_v1"
_CHOOSE = (
    f"if(!localStorage.getItem('{WORKFLOW_KEY}'))"
    f"localStorage.setItem('{WORKFLOW_KEY}',JSON.stringify('machine_learning'))"
)
DEFAULT_VIEW = f"<script>try{{{_CHOOSE}}}catch(e){{}}</script>".encode()


class ModelTrainingUI:
    """MLflow's ASGI app (imported on first use: `mlflow server` imports this module to inspect it),
    with the script above in the UI's page, the one answer at the root path."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if self._app is None:
            from mlflow.server.fastapi_app import app as mlflow_app

            self._app = mlflow_app
        if scope["type"] != "http" or scope["method"] != "GET" or not _is_index(scope["path"]):
            await self._app(scope, receive, send)
            return
        start: dict | None = None
        body = bytearray()

        async def capture(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            assert start is not None
            page = bytes(body)
            if b"</head>" in page and start["status"] == 200:
                page = page.replace(b"</head>", DEFAULT_VIEW + b"</head>", 1)
            headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"etag")]
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self._app(scope, receive, capture)


def _is_index(path: str) -> bool:
    prefix = os.environ.get("_MLFLOW_STATIC_PREFIX", "").rstrip("/")
    return path in (f"{prefix}/", prefix or "/")


app = ModelTrainingUI()
