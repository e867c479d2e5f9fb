"""Data sets as the experiments read them, each from generated data (``embedded``), the shared data root
(``local``) or the hub (``paper``). Imports only :mod:`fedpeft.core`.

Modules: ``eurosat`` (in-memory image arrays; EuroSAT), ``glue`` (GLUE tasks, metrics, tokenization),
``code_corpus`` (Python source as documents, client shards, packed token blocks), ``instruct`` (instruction /
response pairs, Gemma's chat template), ``weeds`` (field images labelled by their dominant plant class).
"""
