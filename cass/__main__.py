import sys

from cass.cli import main

sys.exit(main())
