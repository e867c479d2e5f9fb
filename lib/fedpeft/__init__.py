"""fedpeft: the helper library of a reproducible study of bandwidth- and memory-efficient fine-tuning.

Modules, one job each:

- ``config``: per-profile parameters, validated when loaded
- ``integrity``: data files checked against the data root's manifest
- ``data``: in-memory image sets and the EuroSAT sources of each profile
- ``partition``: sharing data among clients (IID, stratified, Dirichlet, by label, overlapping)
- ``models``: models built from code
- ``training``: local training and evaluation
- ``strategies``: FedAvg, FedProx, DiLoCo
- ``federated``: the in-process round loop (sampling, evaluation, time limit, checkpoint/resume)
- ``flower_engine``: the same strategies on Flower's simulation engine
- ``ledger``: communication accounting from real serialized messages
- ``quantization``: post-training quantization and measured sizes
- ``profiling``: wall time, throughput, peak memory
- ``reporting``: figure style, figures, LaTeX/markdown tables, metrics, claims
- ``plots``: the study's figure functions
- ``summary``: the per-profile summary report
- ``experiments``: one module per experiment, composed by its notebook
"""

__version__ = "0.1.0"
