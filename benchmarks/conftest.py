import pathlib
import sys

# The reference-style peer (peer.py) imports as a plain module, as tests/ helpers do.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
