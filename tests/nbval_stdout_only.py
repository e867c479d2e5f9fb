"""pytest plugin used by ``make nbval``: a checked cell (``# NBVAL_CHECK_OUTPUT``) is compared on what it prints
to stdout and what it displays, never on its stderr.

Stderr carries library warnings and progress bars whose cell depends on import order and on what was cached when
the notebook was executed: a report re-rendered from cached run records imports torchao (and prints its
deprecation warnings) in the first cell that builds a model, while a fresh execution imports it in the run cell.
Neither says anything about the study's numbers, which are printed to stdout.
"""

from nbval.plugin import IPyNbFile


def pytest_collection_modifyitems(items):
    for item in items:
        notebook = item.parent
        if isinstance(notebook, IPyNbFile) and "stderr" not in notebook.skip_compare:
            notebook.skip_compare = (*notebook.skip_compare, "stderr")
