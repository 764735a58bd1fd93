"""Pod scope authority: durable scopes, delegation, reclaim, restore, rebuild (issue 9).

``algebra`` (pure scope rules), ``edges`` (the delegation edge state machine), ``schema`` (SQL
tables), ``records`` (reading SQL, the space lock), ``tx`` (one pod transaction),
``authority`` / ``leases`` / ``conflicts`` (the operations), ``maintenance`` (lease reaper,
rebuild), ``mirror`` (the signed runtime mirror), ``service`` (what the admin runs), ``views``
and ``tree`` (what the API and the CLI show). See docs/pods.md.
"""
