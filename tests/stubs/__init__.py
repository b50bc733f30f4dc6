"""Real HTTP servers on loopback that stand in for upstreams in tests."""
