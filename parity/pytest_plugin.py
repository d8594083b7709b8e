"""pytest plugin (placeholder until the full plugin lands): registered through the ``pytest11`` entry point."""
