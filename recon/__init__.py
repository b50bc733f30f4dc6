"""Recon: the daemon that makes sure every accepted request ends (`manage.py recon`)."""
