import sys

from nocdet.cli import main

sys.exit(main())
