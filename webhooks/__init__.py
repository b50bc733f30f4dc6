"""Webhooks (Standard Webhooks): a client's signed notice that its request started or ended."""
