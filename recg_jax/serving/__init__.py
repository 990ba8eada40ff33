"""Recommendations for a new catalogue from a finished run, with nothing retrained.

  from recg_jax import serving

  run = serving.load("runs/quickstart")                     # a finished run, loaded once
  catalogue = run.catalogue("shop/items.jsonl")             # ids + text, the run's template
  item_ids, scores = run.recommend({"u1": ["B01", "B07"]}, catalogue, k=10)
  items_NxD = run.item_vectors(catalogue)                   # what candidates are scored with
  users_UxD = run.user_vectors({"u1": ["B01", "B07"]}, catalogue)   # score = users_UxD @ items_NxD.T

  day_one = serving.method()                                # no run: the default training-free method
  item_ids, scores = day_one.recommend({"u1": ["B01", "B07"]}, day_one.catalogue("shop/items.jsonl"))

`python -m recg_jax.recommend` is the command-line form: its flags are recommend_files' arguments.

Modules: catalogue.py (catalogue files), histories.py (history files), run.py (loading a run, user and
item vectors, recommend), topk.py (blocked top-k on device), output.py (JSONL / CSV lists, vector export),
files.py (file to file, the command's work).
"""

from recg_jax.serving.catalogue import Catalogue
from recg_jax.serving.catalogue import read_catalogue
from recg_jax.serving.files import recommend_files
from recg_jax.serving.histories import Histories
from recg_jax.serving.histories import read_histories
from recg_jax.serving.run import load
from recg_jax.serving.run import method
from recg_jax.serving.run import NotAFinishedRunError
from recg_jax.serving.run import Recommendations
from recg_jax.serving.run import Run
from recg_jax.serving.run import training_free_methods

__all__ = [
    "Catalogue",
    "Histories",
    "NotAFinishedRunError",
    "Recommendations",
    "Run",
    "load",
    "method",
    "read_catalogue",
    "read_histories",
    "recommend_files",
    "training_free_methods",
]
