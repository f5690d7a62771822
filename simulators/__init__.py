"""The fleet simulator: machines that publish exactly as real firmware would.

The face of the component::

    machines = machines_from_ledger(generate_ledger(200, seed=7))
    scenario = load_scenario(Path("scenario.yaml"))
    config = SimulationConfig(machines=machines, start_ms=..., duration_ms=..., seed=7,
                              scenario=scenario)
    sink = MemorySink()                      # or MqttSink(...) for a real broker
    # (multiplexed through the ledger's gateways: gateway_of=gateway_assignment(machines))
    stats = Simulation(config, sink).run()   # as fast as possible; speed=K to pace
    # or: run_simulation(config, sink, ground_truth=Path("truth.jsonl"))

`Simulation.ticks()` yields the actions of each tick without sending them (for recorders);
`Simulation.repair()` queues a repair; commands arrive through the sink.
"""

from simulators.errors import FleetSourceError, PublishError, ScenarioError, SimulatorError
from simulators.ledger import (
    MachineSpec,
    gateway_assignment,
    generate_ledger,
    ledger_csv_text,
    machines_from_csv,
    machines_from_database,
    machines_from_ledger,
    write_ledger_csv,
)
from simulators.run import run_simulation
from simulators.scenario import (
    BatchDefect,
    Injection,
    Misbehaviour,
    RepairAction,
    Scenario,
    Selector,
    load_scenario,
    parse_scenario,
)
from simulators.simulation import RunStats, Simulation, SimulationConfig
from simulators.sinks import Action, Connect, Disconnect, MemorySink, Outgoing, Sink
from simulators.truth import GroundTruth, TruthRecord, read_ground_truth

__all__ = [
    "Action",
    "BatchDefect",
    "Connect",
    "Disconnect",
    "FleetSourceError",
    "GroundTruth",
    "Injection",
    "MachineSpec",
    "MemorySink",
    "Misbehaviour",
    "Outgoing",
    "PublishError",
    "RepairAction",
    "RunStats",
    "Scenario",
    "ScenarioError",
    "Selector",
    "Simulation",
    "SimulationConfig",
    "SimulatorError",
    "Sink",
    "TruthRecord",
    "gateway_assignment",
    "generate_ledger",
    "ledger_csv_text",
    "load_scenario",
    "machines_from_csv",
    "machines_from_database",
    "machines_from_ledger",
    "parse_scenario",
    "read_ground_truth",
    "run_simulation",
    "write_ledger_csv",
]
