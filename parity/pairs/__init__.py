"""Built-in pairs: one module per pair, each calling :func:`parity.pairs.registry.register`."""
