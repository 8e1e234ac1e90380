"""Profiles (default.yaml, production.yaml) and the typed settings they load into."""

from configs.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
