"""`python -m meddl ...`: how Slicer's Python (PythonSlicer) runs the engine as a worker."""

import sys

from .cli import main

sys.exit(main())
