"""The errors shipway raises on purpose. The CLI turns each into one line on stderr and its exit code."""


class ShipwayError(Exception):
    """Something the user can fix: bad input, bad config, a missing version. Exit code 2."""

    exit_code = 2


class ConfigError(ShipwayError):
    """A profile or environment variable that cannot be used."""


class DataError(ShipwayError):
    """Input data that cannot be read or used: unreadable file, no rows, missing column."""


class SnapshotError(ShipwayError):
    """A snapshot that is missing, incomplete, or changed since it was written."""


class RegistryError(ShipwayError):
    """A registered model, version or alias that does not exist or cannot be used."""


class GateError(ShipwayError):
    """A gate or check said no. Exit code 1."""

    exit_code = 1


def is_transient(exc: BaseException) -> bool:
    """A failure that the same call may not meet again: the network, a throttled or failing service."""
    from botocore.exceptions import ClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ShipwayError):
        return False
    if isinstance(exc, (OSError, BotoConnectionError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error.get("Code") in ("Throttling", "SlowDown", "RequestTimeout")
    return False


def retry_on_io(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient I/O failures only; bad input fails the same way again."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False
