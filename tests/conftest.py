import sys
from pathlib import Path

# The helpers in this folder (distributed.py) must import in spawned processes too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
