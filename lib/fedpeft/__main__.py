"""``python -m fedpeft``: the study's command line (:mod:`fedpeft.experiments.cli`)."""

from fedpeft.experiments.cli import main

main()
