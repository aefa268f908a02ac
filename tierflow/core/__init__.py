"""The ground floor: settings, config, constants, errors, and the PostgreSQL and Redis clients.

Nothing here imports any other floor of tierflow (see ARCHITECTURE.md).
"""
