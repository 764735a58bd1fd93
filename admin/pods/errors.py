"""The pod authority's error answers (``shared/spec/pod-scope.md``); the framework maps every
:class:`admin.errors.ApiError` to the envelope in one place."""

from __future__ import annotations

from typing import Any

from admin.errors import ApiError, Conflict, NotFound


class PodMissing(NotFound):
    code = "pod_missing"


class SegmentMissing(NotFound):
    code = "segment_missing"


class PodExists(Conflict):
    code = "pod_exists"


class PodInactive(Conflict):
    """No active pointer (cleared, e.g. by a reclaim)."""

    code = "pod_inactive"


class PodPending(Conflict):
    """The active session has no first segment yet (e.g. after an interrupted fork)."""

    code = "pod_pending"


class SnapshotCorrupt(Conflict):
    """What SQL holds for the pod does not decode (its scope) or does not hang together (its
    pointer names a session or segment that is not there)."""

    code = "snapshot_corrupt"


class NotSubset(ApiError):
    """422: rules outside the grant or the effective scope; ``details.fields`` names them."""

    status = 422
    code = "not_subset"

    def __init__(self, message: str, field: str, **details: Any) -> None:
        super().__init__(
            message, details={"fields": [{"path": field, "message": message}], **details}
        )


class WriteConflict(Conflict):
    code = "write_conflict"


class SegmentConflict(Conflict):
    code = "segment_conflict"


class NotAChild(Conflict):
    code = "not_a_child"


class LeaseExpired(Conflict):
    code = "lease_expired"


class LeaseMismatch(Conflict):
    code = "lease_mismatch"
