import sys

from pgfanout.cli.main import main

sys.exit(main())
