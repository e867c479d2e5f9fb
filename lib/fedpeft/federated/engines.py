"""One dispatch for the three engines that run federated rounds, so that every experiment picks its engine the same way.

- ``inprocess``: :func:`fedpeft.federated.loop.run_federated` (every setting; writes a checkpoint after each round,
  so a killed run resumes exactly);
- ``flower``: :func:`fedpeft.federated.flower_engine.run_flower`, Flower's simulation engine (fp32 transport; a
  killed run starts again from round 0: Flower's engine keeps no checkpoint);
- ``deployment``: :func:`fedpeft.federated.deployment.engine.run_deployment`, Flower's Deployment Engine with one
  SuperNode per client (as ``flower`` for resuming); its extra measurements come back in ``EngineRun.deployment``.

Each returns the same :class:`~fedpeft.federated.loop.FederatedResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from fedpeft.federated.loop import Client, FederatedResult, RoundConfig, run_federated
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg
from fedpeft.training.contract import Trainer

ENGINES = ("inprocess", "flower", "deployment")


@dataclass
class EngineRun:
    result: FederatedResult
    deployment: Any | None = None  # the Deployment Engine's DeploymentResult (links, startup, socket bytes)


def check_engine(engine: str, allowed: Sequence[str] = ENGINES) -> None:
    if engine not in allowed:
        raise ValueError(f"engine = {engine!r} is not allowed; it must be one of {list(allowed)}")


def run_rounds(engine: str, model: nn.Module, clients: Sequence[Client], strategy: FedAvg, trainer: Trainer,
               config: RoundConfig, *, server_test: Any | None = None, network: NetworkModel | None = None,
               checkpoint_path: Path | None = None, progress: bool = True, description: str = "rounds",
               deployment_threads: int = 1, deployment_clientapps: str = "per-message") -> EngineRun:
    """Run ``config.num_rounds`` rounds of ``strategy`` on ``engine``. ``checkpoint_path`` is used by the in-process
    engine only (the Flower engines restart a killed run); ``deployment_threads``: torch threads of each SuperNode's
    process on the Deployment Engine; ``deployment_clientapps``: how its SuperNodes run their ClientApps
    (:data:`fedpeft.federated.deployment.engine.CLIENTAPPS`)."""
    check_engine(engine)
    if engine != "inprocess" and strategy.folds_base_weights:
        raise ValueError(f"engine = {engine!r} is not allowed with {strategy.describe()}: it folds a residual into the "
                         "clients' frozen weights, which only the in-process round loop sends; use engine 'inprocess'")
    if engine != "inprocess" and strategy.per_client_messages:
        raise ValueError(f"engine = {engine!r} is not allowed with {strategy.describe()}: it sends each client its own "
                         "message (adapters of different ranks), which only the in-process round loop does; use engine "
                         "'inprocess'")
    if engine == "flower":
        from fedpeft.federated.flower_engine import run_flower

        return EngineRun(run_flower(model, clients, strategy, trainer, config, server_test=server_test, network=network))
    if engine == "deployment":
        from fedpeft.federated.deployment.engine import run_deployment

        deployment = run_deployment(model, clients, strategy, trainer, config, server_test=server_test, network=network,
                                    torch_threads=deployment_threads, clientapps=deployment_clientapps)
        return EngineRun(deployment.result, deployment)
    return EngineRun(run_federated(model, clients, strategy, trainer, config, server_test=server_test,
                                   checkpoint_path=checkpoint_path, progress=progress, description=description, network=network))
