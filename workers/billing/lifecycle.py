"""The rules' entry points as their callers know them; the rules live in workers/billing/apply/."""

from __future__ import annotations

from workers.billing.apply import Applied, SubscriptionNotYetKnown, apply
from workers.billing.apply.run import catalog, charged, terms

__all__ = ["Applied", "SubscriptionNotYetKnown", "apply", "catalog", "charged", "terms"]
