"""The operators' admin: catalog (handlers, offers), deals, accounts and the ledger, API keys,
breakers; the audit trail of changes. Django's autodiscovery imports this package; each module
registers its pages (audit: the models whose changes are logged)."""

from api.admin import accounts, audit, breakers, catalog, deals, keys  # noqa: F401 (they register)
