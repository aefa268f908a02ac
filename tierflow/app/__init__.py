"""The roof (below the CLI): the ``tierflow up`` supervisor, embedded services, demo and status.

Nothing but :mod:`tierflow.cli` imports it (see ARCHITECTURE.md).
"""
