"""`serving:` the gateway, its limits, its sensitive columns and the one latency budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from configs.settings.base import LocalPath, Section


class ServingSettings(Section):
    host: str = Field("127.0.0.1", description="Address `shipway serve` binds to.")
    port: int = Field(5001, ge=0, le=65535, description="Port `shipway serve` listens on.")
    workers: int = Field(
        0,
        ge=0,
        description="Gateway processes `shipway serve` runs on its one port (SO_REUSEPORT: the kernel spreads "
        "connections over them), each on a core of its own; 0: one per CPU, at most 8. They share one Shadow "
        "process and the prediction log, and /metrics on any of them answers for all (docs/gateway.md).",
    )
    poll_interval_s: float = Field(
        5.0, gt=0, description="How often the gateway reads aliases and the canary share from the registry."
    )
    timeout_ms: float = Field(
        250.0,
        gt=0,
        description="A model call's time allowance, plus timeout_per_row_ms for each row of its batch: a model "
        "slower than that (or finding no free thread within it) is treated as failed and the fallback chain answers.",
    )
    timeout_per_row_ms: float = Field(
        0.5,
        ge=0,
        description="Time added to timeout_ms for each row of a batch, so that a large batch gets the model's answer "
        "late rather than a fallback's: 10,000 rows are given 5.25 s, 100,000 rows 50.25 s (`mlflow models serve` "
        "gives any request 60 s).",
    )
    baseline_max_rows: int = Field(
        100,
        ge=0,
        description="Largest batch the heuristic baseline may answer for a failing model. A larger batch that "
        "neither the model nor Previous answered gets 504 DEADLINE_EXCEEDED (the model ran out of time) or 503 "
        "TEMPORARILY_UNAVAILABLE (it failed), never the baseline's guesses; counted in "
        "shipway_large_batches_refused_total.",
    )
    cache_size: int = Field(10_000, ge=0, description="Last good answers kept for the fallback chain (0: no cache).")
    cache_max_age_s: float = Field(600.0, gt=0, description="A cached answer older than this is not served.")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Larger request bodies get 413.")
    max_rows: int = Field(100_000, gt=0, description="Requests with more rows get 413.")
    max_feedback_labels: int = Field(
        500, gt=0, description="Most labels one POST /feedback may carry; a call with more gets 413, none logged."
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a request's body once its headers are in; a slower body (or one shorter "
        "than its Content-Length) gets 408 and the connection is closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection that has not sent a complete request head (request line and headers) this long "
        "after connecting or starting the request is closed (408 once part of a head arrived).",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this long (uvicorn's timeout_keep_alive)."
    )
    max_header_bytes: int = Field(
        65_536, gt=0, description="A request head larger than this gets 431 and the connection is closed."
    )
    model_threads: int = Field(
        4,
        gt=0,
        description="Threads for Production's and Canary's model calls (ONNX calls of up to 64 rows run inline). "
        "A call waits at most its time allowance (timeout_ms + timeout_per_row_ms a row) for one; a call past it "
        "gives its thread's place to a new one.",
    )
    fallback_threads: int = Field(
        2, gt=0, description="Threads of the fallback chain's own (Previous, baseline), free when the others are busy."
    )
    sensitive_columns: dict[str, Literal["hash", "drop"]] = Field(
        default_factory=dict,
        description="Input columns hashed (HMAC-SHA256 keyed by hash_salt) or dropped before they are logged; a "
        "name the served version does not have is an error (in /health problems, and at `shipway serve` start). "
        "Training follows it: the contract keeps such a column hashed (under the same salt) or as type and nulls "
        "only, and monitoring and the shadow analysis check what the log keeps.",
    )
    hash_salt: SecretStr = Field(
        SecretStr(""),
        description="Secret key of the sensitive-column hash (from SHIPWAY_SERVING__HASH_SALT); required when a "
        "column is hashed: an unkeyed hash of a small domain (ages, ZIP codes) is reversed by trying every value. "
        "Give training, monitoring and the gateway the same one: contracts hold hashes under it.",
    )
    api_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token required on /feedback (every endpoint that changes state) when set; from "
        "SHIPWAY_SERVING__API_TOKEN, never a profile file.",
    )
    require_api_token: bool = Field(
        False, description="Refuse to start the gateway without serving.api_token (the production profile sets it)."
    )
    log_queue_size: int = Field(
        50_000, gt=0, description="Prediction-log rows waiting to be written; beyond it rows are dropped and counted."
    )
    log_batch_size: int = Field(500, gt=0, description="Prediction-log rows written per transaction.")
    log_flush_interval_s: float = Field(0.5, gt=0, description="Longest time a logged row waits to be written.")
    shadow_queue_size: int = Field(
        1_000, gt=0, description="Requests waiting for the Shadow model; beyond it they are skipped and counted."
    )
    shadow_cpus: list[int] | None = Field(
        None,
        description="CPUs the Shadow's process may use; default: the last CPU, when there are more ([]: any).",
    )
    state_dir: LocalPath = Field(
        ".shipway/serving-state",
        description="Where the gateway keeps the last good version of each alias, to serve at once after a "
        "restart while it reads the registry; empty: always start from the registry.",
    )
    latency_budget_p99_ms: float = Field(
        50.0,
        gt=0,
        description="The latency budget, one for every stage: p99 of one-row requests through the gateway. The "
        "benchmark gates a new version on it (judged as The latency budget below says), the shadow analysis "
        "judges Shadow's p99 and monitoring each window's p99 against it.",
    )
    bench_requests: int = Field(
        1_000,
        gt=0,
        description="Most requests per measurement of `shipway bench`; it stops sooner once the verdict is clear "
        "or bench_seconds have passed (with 100 requests at least).",
    )
    bench_seconds: float = Field(
        3.0, gt=0, description="Time after which a measurement of `shipway bench` judges on the requests it has."
    )
    startup_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest wait for a gateway that shipway starts itself (the latency bench, tests) to "
        "answer: loading the model included. Raise it on a busy machine.",
    )

    @model_validator(mode="after")
    def _hashing_needs_a_key(self) -> ServingSettings:
        hashed = sorted(c for c, rule in self.sensitive_columns.items() if rule == "hash")
        if hashed and not self.hash_salt.get_secret_value():
            raise ValueError(
                f"serving.sensitive_columns hashes {', '.join(map(repr, hashed))} but serving.hash_salt is empty: "
                "set SHIPWAY_SERVING__HASH_SALT to a secret"
            )
        return self
