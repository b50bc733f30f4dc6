"""Recon: the daemon that makes sure every accepted request ends (arrives with its issue)."""
