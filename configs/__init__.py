"""Versioned application configs: the seed's YAML protocol, stored in MongoDB (its issue)."""
