"""polypssl.pretrain."""
