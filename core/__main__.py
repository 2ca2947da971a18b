import sys

from ctbundles.cli import main

sys.exit(main())
