"""polypssl.study."""
