"""Keys of the Prefect artifacts the flows publish (Prefect takes lowercase letters, digits, dashes)."""


def artifact_key(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() else "-" for c in part.lower()).strip("-") for part in parts)
