"""Test infrastructure helpers (real redis-server processes, ports)."""
