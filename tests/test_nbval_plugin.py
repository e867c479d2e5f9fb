"""The nbval plugin of `make nbval` ignores a checked cell's stderr and still compares its stdout."""

from pathlib import Path

import nbformat
import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
CELL = "# NBVAL_CHECK_OUTPUT\nimport sys\nprint('committed number: 42')\nprint('a warning', file=sys.stderr)"


def _notebook(path: Path, stdout: str, stderr: str | None) -> None:
    """A one-cell notebook whose stored outputs are `stdout` and, if given, `stderr`."""
    cell = nbformat.v4.new_code_cell(CELL, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stdout)]
    if stderr is not None:
        cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=stderr))
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _nbval(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the subprocess imports tests.nbval_stdout_only from the repo
    return pytester.runpytest_subprocess("--nbval-lax", "-p", "tests.nbval_stdout_only", "-p", "no:cacheprovider",
                                         "checked.ipynb")


@pytest.mark.slow
@pytest.mark.parametrize("stored_stderr", [None, "W1123 some other library's warning\n"])
def test_stderr_of_a_checked_cell_is_not_compared(pytester, monkeypatch, stored_stderr):
    _notebook(pytester.path / "checked.ipynb", "committed number: 42\n", stored_stderr)
    result = _nbval(pytester, monkeypatch)
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_stdout_of_a_checked_cell_is_still_compared(pytester, monkeypatch):
    _notebook(pytester.path / "checked.ipynb", "committed number: 41\n", "a warning\n")
    result = _nbval(pytester, monkeypatch)
    result.assert_outcomes(failed=1)
    assert "committed number: 41" in result.stdout.str()


def test_plugin_is_the_one_make_nbval_loads():
    assert "-p tests.nbval_stdout_only" in (REPO / "Makefile").read_text()
