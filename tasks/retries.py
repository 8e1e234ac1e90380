"""Which failures are worth a retry: Prefect's retry condition for the tasks that do I/O."""

from core.errors import ShipwayError


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
