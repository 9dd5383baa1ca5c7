import sys
from pathlib import Path

# tests/fakes.py and tests/train_toy.py are imported by name from the tests.
sys.path.insert(0, str(Path(__file__).parent))
