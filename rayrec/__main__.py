import sys

from rayrec.cli import main

sys.exit(main())
