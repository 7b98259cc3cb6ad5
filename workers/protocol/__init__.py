"""The provider's wire protocols: parsing, signatures and receipts. Pure: no Flask, no database."""
