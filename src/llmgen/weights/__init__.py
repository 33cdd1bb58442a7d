"""Checkpoint formats: reading, name mapping, loading into our modules, inspection."""
