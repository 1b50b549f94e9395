"""The recipes' tests: recipes/ goes on sys.path, so tests import a recipe as a module."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(ROOT, "recipes")
if RECIPES not in sys.path:
    sys.path.insert(0, RECIPES)
