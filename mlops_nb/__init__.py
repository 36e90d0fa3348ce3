"""mlops-nb: research notebooks to production. Public API below; see README.md for the map."""

from mlops_nb.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
