"""polypssl.backbones."""
