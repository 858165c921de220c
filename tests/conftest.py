import os
import sys

# the scripts live at the top of the repo, flat, nanoGPT style: make them importable from tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
