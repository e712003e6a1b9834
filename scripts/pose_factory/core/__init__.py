"""Shared by every side: where things live, settings and secrets, errors, schemas, the batch contract, progress."""
