"""polypssl.evaluate."""
