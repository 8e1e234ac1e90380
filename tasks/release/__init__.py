"""A release in the registry: the version and its lineage, aliases, tags, record and decisions."""
