"""Continuing a run of the in-process round loop with another model (the EuroSAT QAT arm: its last rounds train the
fake-quantized graph of the model the float rounds trained).

:func:`continue_rounds` writes the checkpoint from which :func:`fedpeft.federated.loop.run_federated` resumes: the
float run's history, client rows, ledger and last round, with the new model's state as the global state and the
new strategy's and trainer's fresh states. The continued rounds are then numbered as the run's own, so their client
draws and batch orders are those that an uninterrupted run draws for the same round numbers (the loop seeds them by
round), and their history and ledger follow the float rounds' in one table each. A continued run that is killed
resumes from its own checkpoint, which :func:`continue_rounds` then leaves as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from fedpeft.core.checkpoints import load as load_checkpoint
from fedpeft.core.files import atomic_torch_save
from fedpeft.federated.loop import Client, RoundConfig, exchanged_keys, run_identity
from fedpeft.federated.strategies import FedAvg
from fedpeft.training.contract import Trainer


def continue_rounds(checkpoint_from: Path, checkpoint_to: Path, model: nn.Module, clients: Sequence[Client], strategy: FedAvg,
                    trainer: Trainer, config: RoundConfig) -> int:
    """Write ``checkpoint_to`` so that ``run_federated(model, clients, strategy, trainer, config,
    checkpoint_path=checkpoint_to)`` runs the rounds after the last one of the run that wrote ``checkpoint_from``,
    starting from ``model``'s state; nothing is written when ``checkpoint_to`` exists (the continued run's own).
    Returns the round the continuation starts after."""
    checkpoint_to = Path(checkpoint_to)
    if checkpoint_to.is_file():
        return int(load_checkpoint(checkpoint_to)["round"])
    before = load_checkpoint(Path(checkpoint_from))
    if before["round"] >= config.num_rounds:
        raise ValueError(f"checkpoint {checkpoint_from} ends at round {before['round']}: nothing is left to continue up to "
                         f"num_rounds = {config.num_rounds}")
    keys = exchanged_keys(model, config.exchange)
    state = model.state_dict()
    atomic_torch_save({"identity": run_identity(config, strategy, trainer, clients, keys), "round": before["round"],
                       "global_state": {k: state[k].detach().clone() for k in keys}, "strategy_state": strategy.state_dict(),
                       "trainer_state": trainer.state_dict(), "history": before["history"],
                       "client_history": before["client_history"], "ledger": before["ledger"]}, checkpoint_to)
    return int(before["round"])
