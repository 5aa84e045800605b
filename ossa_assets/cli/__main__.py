import sys

from ossa_assets.cli import main

sys.exit(main())
