import sys
from pathlib import Path

# The helpers in this folder (distributed.py) must import in spawned processes too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import alexnet_mp.config  # noqa: E402,F401 - registers the schema that conf/*.yaml names (base_train, ...)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
