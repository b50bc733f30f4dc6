"""The executor: RQ jobs that run handler calls, the handler registry, and its HTTP client."""
