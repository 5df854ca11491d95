"""Producers of SA changes: the updown spool and the pluto log."""
