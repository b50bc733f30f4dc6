"""The HTTP surface of the marketplace: views (input → one service or selector → output), the
URL map under /svc/, request bodies, representations, errors and the intake throttle."""
