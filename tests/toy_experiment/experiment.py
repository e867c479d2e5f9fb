"""The toy experiment's declaration; ``notebook`` is set by the test (a notebook written to its scratch folder)."""

from fedpeft.core.registry import Experiment, MainScore


def declare(notebook: str) -> Experiment:
    return Experiment(name="toy_means", title="Toy: the mean of generated numbers", seed_report="none (a test's toy)",
                      notebook=notebook, history=("round", "score"), main_score=MainScore("scalar", "score", "mean"),
                      package="toy_experiment")
