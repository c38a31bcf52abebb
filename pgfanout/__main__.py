import sys

from pgfanout.cli import main

sys.exit(main())
