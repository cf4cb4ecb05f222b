"""Load harness: concurrent workers against any session factory, measured at
the pools (checkout wait, timeouts, peak connections) to show pool starvation.

    summary = await run_load(Session, profile="hold", concurrency=200, duration=10)
    print(summary.model_dump_json(indent=2))
"""

from ._plot import plot_summaries
from ._processes import LoadProcessError, SessionFactoryMaker, run_load_in_processes
from ._profiles import PROFILES, Profile, Workload, prepare
from ._runner import run_load
from ._summary import Distribution, EngineStats, LoadSummary

__all__ = [
    "PROFILES",
    "Distribution",
    "EngineStats",
    "LoadProcessError",
    "LoadSummary",
    "Profile",
    "SessionFactoryMaker",
    "Workload",
    "plot_summaries",
    "prepare",
    "run_load",
    "run_load_in_processes",
]
