"""Errors of the simulator component.

Exception tree::

    SimulatorError (AquaFleetError)   root of everything this package raises
    ├── ScenarioError                 a scenario or repairs file is refused; names the key path
    ├── FleetSourceError              no machines could be read (ledger file or database)
    └── PublishError                  the broker refused or dropped a simulator connection

The CLI turns any of them into one line, as it does for every AquaFleetError.
"""

from __future__ import annotations

from aquafleet.errors import AquaFleetError

__all__ = ["FleetSourceError", "PublishError", "ScenarioError", "SimulatorError"]


class SimulatorError(AquaFleetError):
    """Root of the errors raised by the simulator."""


class ScenarioError(SimulatorError):
    """A scenario (or repairs) file breaks its format.

    ``source`` is the file (or ``<scenario>`` for an in-memory mapping), ``key`` the path of the
    bad value, e.g. ``faults[2].at``.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{key}: " if key else ""
        super().__init__(f"{source}: {where}{message}")


class FleetSourceError(SimulatorError):
    """The fleet could not be built from the ledger given."""


class PublishError(SimulatorError):
    """An MQTT connection of the simulator failed."""
