"""The operators' admin: catalog (handlers, offers), deals, accounts and the ledger, circuit
breakers. Django's autodiscovery imports this package; each module registers its pages."""

from api.admin import accounts, breakers, catalog, deals  # noqa: F401 (they register)
