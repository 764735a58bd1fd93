"""Staged rollouts: the state machine, the health gate, the reconciler and their SQL."""
