import pathlib
import sys

# tests/reference.py is imported as a plain module by the op tests.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
