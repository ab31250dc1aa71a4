import sys

from polypssl.cli import main

sys.exit(main())
