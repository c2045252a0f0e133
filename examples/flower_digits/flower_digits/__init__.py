"""A plain Flower app (ServerApp + ClientApp) on the embedded digits data, audited by fedleak."""
