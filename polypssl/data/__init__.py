"""polypssl.data."""
