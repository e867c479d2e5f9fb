"""The top layer: one package per experiment (found through :mod:`fedpeft.core.registry`: each declares itself in its
``experiment.py``, and holds its settings, runs and report), the run harness (``runs``), the pipeline renderer
(``pipelines``), the site, the paper and the command line. May import every layer below."""
