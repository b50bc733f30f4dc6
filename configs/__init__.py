"""Versioned application configs: the seed's YAML protocol stored in MongoDB (arrives with its issue)."""
