"""HTTP intake, admin and catalog: handlers, offers, client accounts, and request documents."""
