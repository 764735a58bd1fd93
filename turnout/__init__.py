"""Turnout's composition package: what sits above both planes.

``turnout.cli`` is the ``turnout`` command (it dispatches to ``gateway.launcher``,
``admin.cli`` and ``turnout.dev``); ``turnout.dev`` runs the admin plane and a native gateway
in one process for trying Turnout out. This is the only package that may import both
``gateway`` and ``admin``; they import only ``routing`` and themselves (the import-linter
contracts in ``pyproject.toml``, run by ``scripts/test``).
"""
