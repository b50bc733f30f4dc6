"""Writes, named <entity>_<action>. Reads live in api/selectors.py."""
