"""Judging: event matching shared by waits and assertions, the streaming judges, and state
checks."""
