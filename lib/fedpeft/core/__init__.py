"""The bottom layer: settings, data integrity, devices and precision, seeding, atomic files, measurement.

Imports nothing else from ``fedpeft``. Modules: ``config`` (per-profile parameters, validated when loaded),
``integrity`` (data files checked against the data root's manifest), ``device`` (``device``/``precision``
settings), ``checkpoints`` (a run's checkpoint folder, owned by the run harness), ``seeding`` (generators from
integer tuples), ``files`` (atomic writes), ``profiling`` (wall time, throughput, peak memory, the machine).
"""
