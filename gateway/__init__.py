"""Turnout gateway: the data plane that dispatches tenant HTTP traffic."""
