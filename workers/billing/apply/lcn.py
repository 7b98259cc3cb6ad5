"""An LCN applied: the license's whole state, the newest change winning whatever the order."""

from __future__ import annotations

from typing import Any

from workers.billing.apply.run import Run, SubscriptionNotYetKnown, status_email
from workers.billing.statuses import Status
from workers.errors import PermanentEventError
from workers.protocol.notifications import LicenseChange, LicenseStatus
from workers.store.jsonable import iso

STATUSES = {
    LicenseStatus.ACTIVE: Status.ACTIVE,
    LicenseStatus.PAST_DUE: Status.PAST_DUE,
    LicenseStatus.EXPIRED: Status.EXPIRED,
    LicenseStatus.CANCELED: Status.CANCELED,
    LicenseStatus.PENDING_ACTIVATION: Status.PENDING,
}


def apply_lcn(run: Run, lcn: LicenseChange) -> str:
    """Apply a license change unless a newer one was applied already."""
    code = lcn.license_code
    sub = run.lock(code)
    if sub is None:
        raise SubscriptionNotYetKnown(f"license {code} is not known yet (its order comes first)")
    if sub["last_change_at"] is not None and lcn.updated < sub["last_change_at"]:
        note = (
            f"LCN of {iso(lcn.updated)} is older than the last change applied "
            f"({iso(sub['last_change_at'])}): recorded, not applied"
        )
        run.note(sub, "stale", note)
        return f"ignored: {note}"
    if lcn.status is None:
        raise PermanentEventError(f"unknown LCN STATUS {lcn.stated_status!r}")
    status = STATUSES[lcn.status]
    if sub["status"] == Status.REFUNDED and status == Status.CANCELED:
        status = Status.REFUNDED  # a refund already ended access; disabling it adds nothing
    previous = sub
    sub = run.change(sub, "license", _updates(sub, lcn, status), note=_note(lcn))
    _tell(run, previous, sub, lcn, status)
    return f"{code}: {status}, expires {iso(lcn.expires)}, auto-renew {sub['auto_renew']}"


def _updates(sub: dict[str, Any], lcn: LicenseChange, status: Status) -> dict[str, Any]:
    updates: dict[str, Any] = {
        "status": status,
        "expires_at": lcn.expires,
        "last_change_at": lcn.updated,
    }
    if status == Status.PAST_DUE:
        updates["past_due_since"] = sub["past_due_since"] or lcn.updated
    if lcn.recurring is not None:  # absent says nothing about automatic renewal
        updates["auto_renew"] = lcn.recurring
    if lcn.expires != sub["expires_at"]:
        # An LCN states the license's whole state, so the newest one wins whatever order they
        # arrive in; the policy's prediction is checked on orders (IPN, INS), not restated here.
        updates["expected_expires_at"] = lcn.expires
    return updates


def _note(lcn: LicenseChange) -> str:
    return f"LCN {lcn.stated_status} by {lcn.changed_by or 'provider'}"


def _tell(
    run: Run, previous: dict[str, Any], sub: dict[str, Any], lcn: LicenseChange, status: Status
) -> None:
    """The emails the change calls for: a recovery, a renewal, a new status."""
    expiry = lcn.expires
    renewed = (
        previous["expires_at"] is not None
        and expiry > previous["expires_at"]
        and status == Status.ACTIVE
    )
    if run.recovered(previous, sub):
        renewed = False  # the recovery email tells of the renewal too
    if renewed:
        run.email(
            sub,
            "renewal_confirmation",
            f"renewal/{iso(expiry)}",
            # An LCN carries no amount: the email states none rather than guess one.
            {"new_expires_at": expiry, "expires_at": previous["expires_at"]},
        )
    if status != previous["status"]:
        status_email(run, sub, status, f"lcn/{iso(lcn.updated)}")
