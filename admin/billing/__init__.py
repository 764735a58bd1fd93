"""Metering, plans and quotas: usage rollups, the usage collector, and 402 enforcement.

See ``docs/billing.md`` for the whole picture (how usage flows gateway → Redis → SQL rollups,
the overshoot bound, the operator's knobs).
"""
