"""Everything a report writes: ``outputs`` (figure style, figures, LaTeX/markdown tables, metrics, claims tables,
package versions), ``plots`` (the study's figures) and ``summary`` (the per-profile summary). Imports only
:mod:`fedpeft.core`."""
