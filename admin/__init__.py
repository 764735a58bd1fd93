"""Turnout admin: the control plane (spaces, services, deployments, rollouts)."""
