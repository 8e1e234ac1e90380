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
