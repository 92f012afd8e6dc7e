import sys

from pipeline.bench import main

sys.exit(main())
