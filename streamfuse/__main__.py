import sys

from streamfuse.cli import main

sys.exit(main())
