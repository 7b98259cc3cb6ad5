"""Oversized values: a 400 naming the field, never "retry" (503) while the database is up."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from tests.conftest import INS_SECRET_WORD
from tests.support import FORM, KEY, signed_ins, signed_ipn
from workers.errors import DatabaseUnavailable, ValueNotStorable
from workers.ops import samples
from workers.protocol import form
from workers.protocol.signature import Algorithm
from workers.store import db

LONG_CODE = secrets.token_hex(1500)  # 3,000 characters, incompressible like a crafted one


def _count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]


def test_a_signed_lcn_with_a_3000_character_license_code_is_a_400_naming_it(client, conn):
    pairs = samples.lcn_pairs(
        license_code=LONG_CODE,
        expiration_date="2027-03-03 14:00:00",
        date_updated="2026-11-22 10:00:00",
    )
    body = form.encode(samples.sign_pairs(pairs, KEY, (Algorithm.SHA3_256,)))
    response = client.post("/lcn", data=body, headers=FORM)
    assert response.status_code == 400
    assert response.text == "LICENSE_CODE: 3000 characters, over the limit of 255"
    assert _count(conn) == 0


def test_a_signed_ipn_with_a_3000_character_license_reference_is_a_400_naming_it(client, conn):
    body = signed_ipn(extra={"IPN_LICENSE_REF[]": LONG_CODE})
    response = client.post("/ipn", data=body, headers=FORM)
    assert response.status_code == 400
    assert response.text.startswith("IPN_LICENSE_REF[]: 3000 characters")


def test_an_ins_with_an_oversized_free_text_field_is_a_400_naming_it(client, conn):
    body = signed_ins(INS_SECRET_WORD, item_name_1="x" * 5000)
    response = client.post("/ins", data=body, headers=FORM)
    assert response.status_code == 400
    assert response.text == "item_name_1: 5000 characters, over the limit of 4096"


def test_a_value_too_large_for_an_index_is_not_reported_as_an_outage(database_url, conn):
    with pytest.raises(ValueNotStorable, match="index row"), db.connection(database_url) as c:
        c.execute(
            "INSERT INTO events (kind, dedupe_key, raw_body, content_type, fields,"
            " signature_algo, key_index, license_codes)"
            " VALUES ('lcn', 'k', '', 'x', '{}', 'sha256', 0, %s)",
            ([LONG_CODE * 3],),
        )


def test_a_query_error_that_is_not_an_outage_is_not_reported_as_one(database_url, conn):
    with pytest.raises(psycopg.errors.QueryCanceled) as caught, db.connection(database_url) as c:
        c.execute("SET statement_timeout = '10ms'")
        c.execute("SELECT pg_sleep(1)")
    assert not isinstance(caught.value, DatabaseUnavailable)
    assert not db.is_outage(caught.value)
