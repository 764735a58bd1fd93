"""Alembic migrations for the admin schema (applied on start, or ``turnout admin migrate``)."""
