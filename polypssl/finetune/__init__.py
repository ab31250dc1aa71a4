"""polypssl.finetune."""
