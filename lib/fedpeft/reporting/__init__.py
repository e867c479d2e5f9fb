"""Everything a report writes: ``outputs`` (figure style, figures, LaTeX/markdown tables, metrics, claims tables,
package versions), ``study_report`` (everything one experiment's notebook writes, in one object), ``plots`` (the
study's figures) and ``summary`` (the per-profile summary). Imports only :mod:`fedpeft.core`."""
