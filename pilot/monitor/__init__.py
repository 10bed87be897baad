"""Watching a campaign: ``pilot report`` per task label, and live progress of a running pilot."""
