"""The local stand-in for Segmind's API: see ``server.py``."""

from batchgen.simulator.faults import Fault, FaultPlan, parse_script
from batchgen.simulator.server import DEFAULT_KEY, SimSettings, Simulator, running_simulator

__all__ = ["DEFAULT_KEY", "Fault", "FaultPlan", "SimSettings", "Simulator", "parse_script", "running_simulator"]
