"""Keras 3 reference models, as published. Never imports torch; imports only ``parity.core``; sets no environment
(the entry points do: ``parity``, its CLI and pytest plugin)."""
