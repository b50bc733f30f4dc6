"""Shared infrastructure, the bottom layer: typed environment readers, the store connections
(Redis, MongoDB), the client's address behind proxies, structured logs, metrics plumbing,
embedded servers and admin page helpers.

It imports no package of this project's (the linter's contracts in pyproject.toml say so):
configs, the domain and the processes build on it.
"""
