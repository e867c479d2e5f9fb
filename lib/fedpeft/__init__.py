"""fedpeft: the helper library of a reproducible study of bandwidth- and memory-efficient fine-tuning.

Layers, bottom to top; a module imports only from its own layer and those below it (``tests/test_layers.py``
fails on an upward import):

1. ``core``: settings, data integrity, device and precision, seeding, atomic files, measurement
2. ``data``: the data sets of each profile (EuroSAT, GLUE, Python code, instructions, weeds)
3. ``quantization``: post-training quantization, NF4 layers
4. ``models``: models built from code or loaded offline; LoRA/QLoRA adapters on them
5. ``training``: the trainer contract and its trainers
6. ``federated``: strategies, LoRA aggregation, partitions, ledger, network, the round loop, the Flower engine
7. ``reporting``: figures, tables, claims, summaries
8. ``experiments``: one module per experiment, composed by its notebook
"""

from fedpeft.core import quiet as _quiet

__version__ = "0.1.0"

_quiet.install()  # before any of the study's libraries is imported: their known, harmless messages (core/quiet.py)
