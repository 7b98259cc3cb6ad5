"""A stored notification's body read once into typed values: the only reader of field names.

The rules get Decimal amounts, UTC datetimes and enums, never the provider's field names. A value
that cannot be read raises MalformedNotification naming its field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import TypeVar

from workers.protocol import form, ins
from workers.protocol.errors import MalformedNotification

Fields = Mapping[str, Sequence[str]]
T = TypeVar("T")


class LicenseKind(StrEnum):
    """What an order line does to its license (IPN_LICENSE_TYPE[], read by its meaning)."""

    NEW = "new"
    RENEWAL = "renewal"
    UPGRADE = "upgrade"


_LICENSE_KINDS = {"RENEWAL": LicenseKind.RENEWAL, "RENEW": LicenseKind.RENEWAL}
_LICENSE_KINDS["UPGRADE"] = LicenseKind.UPGRADE


class LicenseStatus(StrEnum):
    """A license's status as an LCN states it, its spellings folded into one."""

    ACTIVE = "ACTIVE"
    PAST_DUE = "PAST_DUE"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"


_LICENSE_STATUSES = {
    "ACTIVE": LicenseStatus.ACTIVE,
    "PASTDUE": LicenseStatus.PAST_DUE,
    "PAST DUE": LicenseStatus.PAST_DUE,
    "PAST_DUE": LicenseStatus.PAST_DUE,
    "EXPIRED": LicenseStatus.EXPIRED,
    "DISABLED": LicenseStatus.CANCELED,
    "CANCELED": LicenseStatus.CANCELED,
    "CANCELLED": LicenseStatus.CANCELED,
    "PENDING ACTIVATION": LicenseStatus.PENDING_ACTIVATION,
    "PENDING_ACTIVATION": LicenseStatus.PENDING_ACTIVATION,
}


class MessageType(StrEnum):
    """The INS message types Rinnovo knows."""

    ORDER_CREATED = "ORDER_CREATED"
    FRAUD_STATUS_CHANGED = "FRAUD_STATUS_CHANGED"
    INVOICE_STATUS_CHANGED = "INVOICE_STATUS_CHANGED"
    SHIP_STATUS_CHANGED = "SHIP_STATUS_CHANGED"
    REFUND_ISSUED = "REFUND_ISSUED"
    RECURRING_INSTALLMENT_SUCCESS = "RECURRING_INSTALLMENT_SUCCESS"
    RECURRING_INSTALLMENT_FAILED = "RECURRING_INSTALLMENT_FAILED"
    RECURRING_STOPPED = "RECURRING_STOPPED"
    RECURRING_COMPLETE = "RECURRING_COMPLETE"
    RECURRING_RESTARTED = "RECURRING_RESTARTED"


@dataclass(frozen=True)
class Customer:
    """Who a notification names; `reference` is the provider's customer id, if any."""

    email: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    language: str = ""
    reference: str = ""


@dataclass(frozen=True)
class OrderItem:
    """One line of an order, for one license."""

    code: str
    pid: str
    name: str
    license_ref: str
    kind: LicenseKind
    quantity: int
    price: Decimal | None
    start: datetime | None
    expires: datetime | None
    total: Decimal | None = None  # the line's total, tax included
    vat: Decimal | None = None  # the line's tax


@dataclass(frozen=True)
class OrderNotification:
    """An IPN: an order, its status and its lines (licensed or not)."""

    refno: str
    status: str  # upper case; the provider has many, the rules name the ones they act on
    fraud: str  # upper case
    at: datetime
    currency: str
    test: bool
    customer: Customer
    total: Decimal | None  # the whole order's, tax included
    lines: tuple[OrderItem, ...]


@dataclass(frozen=True)
class LicenseChange:
    """An LCN: a license's whole state at DATE_UPDATED."""

    license_code: str
    stated_status: str  # as sent, upper case, for notes and errors
    status: LicenseStatus | None  # None: a status Rinnovo does not know
    expires: datetime
    updated: datetime
    recurring: bool | None  # None: the notification says nothing about automatic renewal
    changed_by: str


@dataclass(frozen=True)
class InsItem:
    """One billed item of an INS message."""

    item_id: str
    name: str
    amount: Decimal | None
    recurring: bool  # the item's recurring billing is live
    next_date: datetime | None


@dataclass(frozen=True)
class InsMessage:
    """An INS message about a sale and its billed items."""

    message: str  # as sent, upper case
    type: MessageType | None  # None: a message Rinnovo does not know
    sale_id: str
    invoice_id: str
    currency: str
    at: datetime | None  # None: the message carries no time
    test: bool
    fraud: str  # lower case
    invoice_status: str  # lower case
    customer: Customer
    items: tuple[InsItem, ...]

    def license_code(self, item: InsItem) -> str:
        """The license code Rinnovo gives the subscription of one item."""
        return ins.license_code(self.sale_id, item.item_id)


Notification = OrderNotification | LicenseChange | InsMessage


def parse(kind: str, body: bytes) -> Notification:
    """The typed notification a stored body holds, or MalformedNotification naming the field."""
    fields = form.group(form.parse_form(body))
    readers: dict[str, Callable[[Fields], Notification]] = {
        "ipn": parse_order,
        "lcn": parse_license_change,
        "ins": parse_ins,
    }
    return readers[kind](fields)


def _read(name: str, value: str, reader: Callable[[str], T]) -> T:
    try:
        return reader(value)
    except ValueError as exc:
        raise MalformedNotification(f"{name}: {exc}", name) from None


def _time(name: str, value: str) -> datetime | None:
    return _read(name, value, form.parse_time) if value else None


def _money(value: str) -> Decimal | None:
    # Lenient by design: an amount that cannot be read is an amount not stated.
    try:
        return Decimal(value.strip()) if value.strip() else None
    except InvalidOperation:
        return None


def _quantity(value: str) -> int:
    return int(value) if value.isdigit() and int(value) > 0 else 1


def parse_order(fields: Fields) -> OrderNotification:
    """An IPN's order."""
    first = form.first
    email = first(fields, "CUSTOMEREMAIL")
    customer = Customer(
        email=email,
        first_name=first(fields, "FIRSTNAME"),
        last_name=first(fields, "LASTNAME"),
        company=first(fields, "COMPANY"),
        language=first(fields, "LANGUAGE"),
        reference=first(fields, "AVANGATE_CUSTOMER_REFERENCE"),
    )
    return OrderNotification(
        refno=first(fields, "REFNO"),
        status=first(fields, "ORDERSTATUS").upper(),
        fraud=first(fields, "FRAUD_STATUS").upper(),
        at=_order_time(fields),
        currency=first(fields, "CURRENCY"),
        test=first(fields, "TEST_ORDER") == "1",
        customer=customer,
        total=_money(first(fields, "IPN_TOTALGENERAL")),
        lines=tuple(_order_items(fields)),
    )


def _order_time(fields: Fields) -> datetime:
    for name in ("PAYMENTDATE", "COMPLETE_DATE", "SALEDATE"):
        if when := _time(name, form.first(fields, name)):
            return when
    return _read("IPN_DATE", form.first(fields, "IPN_DATE"), form.parse_time)


def _order_items(fields: Fields) -> list[OrderItem]:
    def at(name: str, index: int) -> str:
        found = form.values(fields, name)
        return found[index] if index < len(found) else ""

    items = []
    for index, pid in enumerate(form.values(fields, "IPN_PID[]")):
        kind = at("IPN_LICENSE_TYPE[]", index).upper()
        items.append(
            OrderItem(
                code=at("IPN_PCODE[]", index),
                pid=pid,
                name=at("IPN_PNAME[]", index),
                license_ref=at("IPN_LICENSE_REF[]", index),
                kind=_LICENSE_KINDS.get(kind, LicenseKind.NEW),
                quantity=_quantity(at("IPN_QTY[]", index)),
                price=_money(at("IPN_PRICE[]", index)),
                start=_time("IPN_LICENSE_START[]", at("IPN_LICENSE_START[]", index)),
                expires=_time("IPN_LICENSE_EXP[]", at("IPN_LICENSE_EXP[]", index)),
                total=_money(at("IPN_TOTAL[]", index)),
                vat=_money(at("IPN_VAT[]", index)),
            )
        )
    return items


def parse_license_change(fields: Fields) -> LicenseChange:
    """An LCN's license change."""
    stated = form.first(fields, "STATUS").upper()
    recurring = form.first(fields, "RECURRING") == "1" if "RECURRING" in fields else None
    return LicenseChange(
        license_code=form.first(fields, "LICENSE_CODE"),
        stated_status=stated,
        status=_LICENSE_STATUSES.get(stated),
        expires=_read("EXPIRATION_DATE", form.first(fields, "EXPIRATION_DATE"), form.parse_time),
        updated=_read("DATE_UPDATED", form.first(fields, "DATE_UPDATED"), form.parse_time),
        recurring=recurring,
        changed_by=form.first(fields, "CHANGED_BY"),
    )


def parse_ins(fields: Fields) -> InsMessage:
    """An INS message."""
    first = form.first
    message = first(fields, "message_type").upper()
    stamp_name = "timestamp" if first(fields, "timestamp") else "sale_date_placed"
    customer = Customer(
        email=first(fields, "customer_email"),
        first_name=first(fields, "customer_first_name"),
        last_name=first(fields, "customer_last_name"),
        language=first(fields, "customer_language"),
    )
    return InsMessage(
        message=message,
        type=MessageType(message) if message in MessageType.__members__ else None,
        sale_id=first(fields, "sale_id"),
        invoice_id=first(fields, "invoice_id"),
        currency=first(fields, "list_currency") or first(fields, "cust_currency"),
        at=_time(stamp_name, first(fields, stamp_name)),
        test=first(fields, "demo").upper() == "Y",
        fraud=first(fields, "fraud_status").lower(),
        invoice_status=first(fields, "invoice_status").lower(),
        customer=customer,
        items=tuple(_ins_item(item) for item in ins.items(fields)),
    )


def _ins_item(item: dict[str, str]) -> InsItem:
    return InsItem(
        item_id=item["item_id"],
        name=item["item_name"],
        amount=_money(item["item_list_amount"]),
        recurring=item["item_rec_status"].lower() == "live",
        next_date=_time("item_rec_date_next", item["item_rec_date_next"]),
    )
