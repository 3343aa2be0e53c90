import sys

from clawpen.cli import main

sys.exit(main())
