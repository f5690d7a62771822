"""AquaFleet's shared core: settings, the database store, the equipment ledger and the CLI.

The product's components (ingest, rules, dispatch, api, simulators) build on what this package
re-exports; they never read settings from globals, they are handed a `Settings`.
"""

from aquafleet.config import Settings, load_settings
from aquafleet.errors import AquaFleetError, ConfigError

__all__ = ["AquaFleetError", "ConfigError", "Settings", "load_settings"]
