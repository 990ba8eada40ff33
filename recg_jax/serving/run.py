"""A finished run (or a training-free method), loaded once, that scores any catalogue: item vectors, user
vectors and top-k lists.

`load(workdir)` reads what the run's evaluation used and nothing else is fitted: its config (results.json),
its best checkpoint, for RecG with a sequence-level step the centres and W_f it saved (transfer/), and for
a fusion its fitted theta (fusion.json; the trained part's checkpoint in the run, or in the finished run
it was fitted over). A model that learned one vector per item (variants 'id' and 'text_id': SASRec-ID,
the hybrids built on it) scores the catalogue it was trained on: its item ids (item_ids.json) must be the
catalogue's, in any order; an item it never saw has no vector, and is an error naming it.
A catalogue's items are embedded with the run's own encoder settings into the run's embedding cache
(cache/embeddings/catalogue-<name>, reused while its manifest matches), the run's table transform is
applied with the catalogue's own statistics, and users are scored with the run's main head
(transfer.main_head): the user and item vectors evaluation computes for a target domain, and its scores
up to the rounding of a matrix product taken in blocks of the catalogue.

Users are grouped by input length into the run's eval.length_buckets and cut into fixed-size batches (the
last one padded), as evaluation does; every batch is then ranked by topk.blocked_top_k.

`method(name)` needs no run: a preset of variant text_knn (config/presets.py; the default
DEFAULT_METHOD, the best training-free recommender of the leave-one-domain-out study) over the default
config, its catalogue embeddings cached under paths.user_cache_dir(). A multi-interest method (the
softmax or max aggregate) scores each user by the rows of their history, so it has no user vectors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from recg_jax import config as config_lib
from recg_jax import errors
from recg_jax import evaluate as evaluate_lib
from recg_jax import finished_run
from recg_jax import fusion as fusion_lib
from recg_jax import paths
from recg_jax import pipeline
from recg_jax import transfer as transfer_lib
from recg_jax.config import presets as presets_lib
from recg_jax.config import serving as serving_config
from recg_jax.data import types
from recg_jax.models import recommender as recommender_lib
from recg_jax.models import scoring
from recg_jax.serving import catalogue as catalogue_lib
from recg_jax.serving import histories as histories_lib
from recg_jax.serving import topk

NotAFinishedRunError = errors.NotAFinishedRunError


class Recommendations(NamedTuple):
  """Top-k lists of every user, in the order of the histories.

  item_ids: [U, k] object, best first; None where the user has fewer than k candidates.
  scores: [U, k] float32 <user vector, item vector>; -inf where item_ids is None.
  """

  item_ids: np.ndarray
  scores: np.ndarray


def _table_width(params) -> int | None:
  """H of the frozen rows the model reads (W_p's input width), None for a model without parameters."""
  try:
    return int(params["items"]["W_p"]["kernel"].shape[0])
  except (KeyError, TypeError):
    return None


def _check_structure(workdir: paths.Path, config: ml_collections.ConfigDict, params, num_items: int) -> None:
  """Raises unless the checkpoint's parameters are those of the model the config builds (for num_items
  items: what sizes a learned item table)."""
  model = recommender_lib.build_model(config, num_items)
  width = _table_width(params) or (int(config.model.hidden_dim) if config.model.variant == "text_id" else 1)
  table = jax.ShapeDtypeStruct((num_items + 1, width), jnp.float32)
  want = jax.eval_shape(lambda t: recommender_lib.init_variables(model, jax.random.key(0), t), table)
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  if shapes(want["params"]) != shapes(params):
    raise NotAFinishedRunError(
        f"{workdir}: the best checkpoint's parameters do not fit the model of its "
        "results.json config (another run's checkpoint?)"
    )


def catalogue_domain(catalogue: catalogue_lib.Catalogue) -> types.DomainData:
  """The catalogue as an interaction-free domain named catalogue-<name>: what the embedding cache keys
  (encoders/embed.py), in its own folder beside the run's domains."""
  return types.DomainData(
      name=f"catalogue-{catalogue.name}",
      item_tokens=np.concatenate([np.array(["[PAD]"], object), catalogue.item_ids]),
      item_fields={},
      item_text=np.concatenate([np.array([""], object), catalogue.item_text]),
      user_tokens=np.array([], object),
      offsets=np.zeros(1, np.int64),
      items=np.zeros(0, np.int32),
  )


@dataclasses.dataclass
class _Prepared:
  """One catalogue on device: its item vectors (a tuple of them for a fused scorer) in catalogue order,
  their blocks (None for a fused scorer: its scores are standardised over the whole catalogue, which is
  then scored at once), and the user function of the run's main head over catalogue rows."""

  catalogue: catalogue_lib.Catalogue
  items: Any  # [N+1, D], or a tuple of them
  blocks: jax.Array | None  # [M, R, D]
  user_fn: Callable[[jax.Array], Any]


class Run:
  """A finished run that recommends; see the module docstring. Build it with `load`."""

  def __init__(
      self,
      workdir: str | os.PathLike | None,
      config: ml_collections.ConfigDict,
      params,
      seq_transfer: transfer_lib.SequenceTransfer | None,
      settings: ml_collections.ConfigDict | None = None,
      cache_root: str | os.PathLike | None = None,
      progress: bool = True,
      label: str = "",
      fusion_fit: dict | None = None,
      item_ids: Sequence[str] | None = None,
  ):
    """workdir: the run's folder; None for a training-free method (then cache_root is needed). fusion_fit:
    a fusion's fusion.json; item_ids: the catalogue a model that learned its items was trained on."""
    if workdir is None and not cache_root:
      raise ValueError("a Run without a workdir needs a cache_root for its catalogue embeddings")
    self.workdir = None if workdir is None else paths.as_path(workdir)
    self.config = config
    self.params = params
    self.seq_transfer = seq_transfer
    self.settings = settings if settings is not None else serving_config.get_config()
    self.cache_root = paths.as_path(cache_root) if cache_root else self.workdir
    self.progress = progress
    self.table_width = _table_width(params)
    self.fusion_fit = fusion_fit
    self.item_ids = None if item_ids is None else np.asarray(list(item_ids), object)
    model = recommender_lib.build_model(config, 1)
    if fusion_fit is not None:
      text = recommender_lib.build_model(fusion_lib.text_config(config), 1)
      theta = float(fusion_fit["theta"])
      self.scorer = scoring.fuse((text.scorer, model.scorer), (1.0 - theta, theta), standardize=True)
    else:
      self.scorer = model.scorer
    self.label = label or f"{config.model.backbone}-{config.model.variant} from {self.workdir}"
    if fusion_fit is not None:
      self.label += f", fused with {fusion_fit['text_preset']} (theta {float(fusion_fit['theta']):.3f})"
    self._prepared: _Prepared | None = None

  @property
  def head(self) -> str:
    """The user head scored: 'fused' (g = W_f [y; s~]) with a sequence-level step, else 'plain' (y)."""
    return transfer_lib.main_head(self.seq_transfer)

  # -- catalogues -------------------------------------------------------------------------------------------

  def catalogue(self, path: str | os.PathLike, name: str | None = None) -> catalogue_lib.Catalogue:
    """read_catalogue with this run's id field and text template."""
    return catalogue_lib.read_catalogue(path, self.config, name)

  def histories(self, source, catalogue: catalogue_lib.Catalogue, on_unknown: str = "error"):
    """read_histories against `catalogue` with this run's field names."""
    return histories_lib.read_histories(source, catalogue, self.config, on_unknown)

  def embeddings(self, catalogue: catalogue_lib.Catalogue) -> np.ndarray:
    """[N+1, H] frozen rows of the catalogue (before the table transform): its own table, or its texts
    embedded with the run's encoder settings through the embedding cache under cache_root."""
    from recg_jax.encoders import embed  # pylint: disable=g-import-not-at-top  (loads encoder code)

    if catalogue.table is not None:
      table, where = np.asarray(catalogue.table, np.float32), "the catalogue's own table"
    else:
      domain = catalogue_domain(catalogue)
      table = embed.domain_embeddings(self.config, domain, os.fspath(self.cache_root))
      where = os.fspath(embed.cache_dir(os.fspath(self.cache_root), domain.name))
    if self.table_width is not None and table.shape[1] != self.table_width:
      raise errors.ConfigError(
          f"catalogue {catalogue.name!r}: its embeddings are {table.shape[1]} wide ({where}) "
          f"but the run's model reads {self.table_width}-wide rows of encoder "
          f"{self.config.encoder.model!r}: embed it with the run's encoder settings"
      )
    return table

  def _trained_rows(self, catalogue: catalogue_lib.Catalogue) -> np.ndarray:
    """[N+1] int32: each catalogue row's row in the run's trained catalogue (0 -> 0); the catalogue must hold
    exactly the items the run learned, in any order."""
    row_of = catalogue.row_of
    new = [i for i in catalogue.item_ids if i not in set(self.item_ids)]
    missing = [i for i in self.item_ids if i not in row_of]
    if new or missing:
      raise errors.ConfigError(
          f"{self.label} learned one vector per item of its own catalogue ({len(self.item_ids):,} items) and "
          f"scores exactly those: catalogue {catalogue.name!r} has {len(new):,} item(s) it never saw"
          + (f" (first: {new[0]!r})" if new else "")
          + f" and lacks {len(missing):,} of its items"
          + (f" (first: {missing[0]!r})" if missing else "")
          + "; serve new items with a training-free method (--method) or a text run"
      )
    to_trained = np.zeros(catalogue.num_items + 1, np.int32)
    to_trained[[row_of[i] for i in self.item_ids]] = np.arange(1, len(self.item_ids) + 1, dtype=np.int32)
    return to_trained

  def _scoring(self, raw_NxH: np.ndarray, num_items: int) -> tuple[Any, Callable[[jax.Array], Any]]:
    """(item vectors, user function of the main head) of the run on a table of raw rows, in its order."""
    model = recommender_lib.build_model(self.config, num_items)
    table = None if raw_NxH is None else pipeline.model_table(self.config, raw_NxH)
    if self.fusion_fit is not None:
      text = fusion_lib.Part(
          recommender_lib.build_model(fusion_lib.text_config(self.config), num_items),
          {},
          jax.device_put(pipeline.model_table(fusion_lib.text_config(self.config), raw_NxH)),
      )
      trained = fusion_lib.Part(model, self.params, None if table is None else jax.device_put(table))
      fused = fusion_lib.Fused(text, trained, float(self.fusion_fit["theta"]))
      return fused.item_vectors(), fused.user_fn()
    user_jit, items_jit = evaluate_lib.eval_programs(model)
    table = None if table is None else jnp.asarray(table)
    items = items_jit(self.params, table)
    if table is None:  # a plain ID model reads no table (and has no sequence-level step)
      return items, lambda seq: user_jit(self.params, None, seq)
    heads_fn, head = transfer_lib.user_heads_fn(model, self.params, table, self.seq_transfer), self.head
    return items, lambda seq: heads_fn(seq)[head]

  def _prepare(self, catalogue: catalogue_lib.Catalogue) -> _Prepared:
    if self._prepared is not None and self._prepared.catalogue is catalogue:
      return self._prepared
    self._prepared = None  # drop the previous catalogue's device arrays first
    needs_text = recommender_lib.reads_table(self.config.model) or self.fusion_fit is not None
    raw = self.embeddings(catalogue) if needs_text else None
    if self.item_ids is None:
      items, user_fn = self._scoring(raw, catalogue.num_items)
    else:  # the model reads its trained catalogue's order: map the catalogue's rows onto it and back
      to_trained = self._trained_rows(catalogue)
      from_trained = np.zeros_like(to_trained)
      from_trained[to_trained] = np.arange(len(to_trained), dtype=np.int32)
      items, trained_fn = self._scoring(None if raw is None else raw[from_trained], catalogue.num_items)
      items = jax.tree.map(lambda x: jnp.take(x, jnp.asarray(to_trained), axis=0), items)
      to_trained_dev = jax.device_put(to_trained)
      user_fn = lambda seq: trained_fn(jnp.take(to_trained_dev, seq, axis=0))
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(items)):
      raise errors.NonFiniteError(f"the run's item vectors of catalogue {catalogue.name!r} are not finite")
    blocks = None
    if not scoring.is_fused(self.scorer):
      rows = min(int(self.settings.item_block_rows) or catalogue.num_items + 1, catalogue.num_items + 1)
      blocks = jax.device_put(topk.pad_blocks(np.asarray(items), rows))
    self._prepared = _Prepared(catalogue, items, blocks, user_fn)
    return self._prepared

  def item_vectors(self, catalogue: catalogue_lib.Catalogue) -> np.ndarray:
    """[N, D] float32: the vectors every item is scored with, in catalogue order (no padding row)."""
    return np.asarray(self._prepare(catalogue).items)[1:]

  # -- users ------------------------------------------------------------------------------------------------

  def _resolve(self, histories, catalogue) -> histories_lib.Histories:
    if isinstance(histories, histories_lib.Histories):
      if catalogue is not None and histories.catalogue is not catalogue:
        raise ValueError("these histories index another catalogue than the one given")
      return histories
    if catalogue is None:
      raise ValueError("histories given as a file or mapping need the catalogue their ids belong to")
    if not isinstance(catalogue, catalogue_lib.Catalogue):
      catalogue = self.catalogue(catalogue)
    return self.histories(histories, catalogue)

  def _batch_size(self, num_users: int) -> int:
    batch = int(self.settings.user_batch_size) or int(self.config.eval.batch_size)
    if batch < 1:
      raise errors.ConfigError(f"user batch size must be >= 1, got {batch}")
    return min(batch, num_users)

  def _user_batches(
      self, histories: histories_lib.Histories, prepared: _Prepared
  ) -> Iterator[tuple[np.ndarray, int, jax.Array]]:
    """(users_B, real rows, user_BxD on device) per fixed-size batch, by input length bucket."""
    max_len = int(self.config.data.max_len)
    inputs_UxL = types.right_aligned([histories.history(u) for u in range(histories.num_users)], max_len)
    buckets = self.settings.length_buckets
    buckets = tuple(self.config.eval.length_buckets if buckets is None else buckets)
    batch = self._batch_size(histories.num_users)
    for width, group in evaluate_lib.length_groups(inputs_UxL, buckets):
      for lo in range(0, len(group), batch):
        real = group[lo : lo + batch]
        users_B = np.concatenate([real, np.full(batch - len(real), real[-1])])
        yield users_B, len(real), prepared.user_fn(jax.device_put(inputs_UxL[users_B, max_len - width :]))

  @property
  def has_user_vectors(self) -> bool:
    """Whether a user is one vector (score = <user, item>); not for multi-interest methods."""
    return scoring.is_dot(self.scorer)

  def require_user_vectors(self) -> None:
    """Raises ConfigError unless users are vectors (has_user_vectors), naming the methods that have them."""
    if self.has_user_vectors:
      return
    if scoring.is_fused(self.scorer):
      how = "sums two scores per user (the text's and a trained model's), not one vector"
    else:
      how = (
          f"scores a user by the rows of their history (model.knn_aggregate "
          f"{self.config.model.knn_aggregate!r}), not by one vector"
      )
    raise errors.ConfigError(
        f"{self.label} {how}: it has no user vectors to give. Methods with one vector per user export: "
        f"the training-free {', '.join(f'--method={m}' for m in exporting_methods()[:3])}, and the runs "
        f"of the trained presets {', '.join(exporting_presets())}"
    )

  def user_vectors(self, histories, catalogue: catalogue_lib.Catalogue | None = None) -> np.ndarray:
    """[U, D] float32 user vectors (the run's main head), in the order of the histories."""
    self.require_user_vectors()
    histories = self._resolve(histories, catalogue)
    prepared = self._prepare(histories.catalogue)
    out = np.zeros((histories.num_users, np.asarray(prepared.items).shape[1]), np.float32)
    with tqdm.tqdm(
        total=histories.num_users,
        unit="user",
        desc="user vectors",
        disable=not self.progress,
        dynamic_ncols=True,
        mininterval=1.0,
    ) as bar:
      for users_B, real, user_BxD in self._user_batches(histories, prepared):
        out[users_B[:real]] = np.asarray(user_BxD)[:real]
        bar.update(real)
    return out

  # -- recommendations --------------------------------------------------------------------------------------

  def recommend(
      self,
      histories,
      catalogue: catalogue_lib.Catalogue | str | os.PathLike | None = None,
      k: int = 20,
      exclude_history: bool = True,
  ) -> Recommendations:
    """The k best items of the catalogue for every user (see Recommendations).

    Args:
      histories: Histories, or a .jsonl / .inter file or {user_id: [item ids]} (resolved against
        `catalogue`, unknown ids an error).
      catalogue: the Catalogue (or a catalogue file) the histories' ids belong to; default theirs.
      k: list length; at most the catalogue's size.
      exclude_history: leave each user's own history out of the list (as evaluation's full protocol masks
        it); False ranks every item.
    """
    return self.recommend_with_user_vectors(histories, catalogue, k, exclude_history)[0]

  def recommend_with_user_vectors(
      self, histories, catalogue=None, k: int = 20, exclude_history: bool = True
  ) -> tuple[Recommendations, np.ndarray | None]:
    """recommend, and the [U, D] user vectors the lists were ranked with (user_vectors' values, from the
    same pass of the model); None for a method without user vectors (has_user_vectors)."""
    histories = self._resolve(histories, catalogue)
    catalogue = histories.catalogue
    if int(k) < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), catalogue.num_items)
    prepared = self._prepare(catalogue)
    multiple = int(self.settings.history_width_multiple)
    kept = []  # (users, real rows, user vectors on device), read back after the ranking

    def batches():
      for users_B, real, user_BxD in self._user_batches(histories, prepared):
        kept.append((users_B, real, user_BxD))
        hist_BxW = (
            histories.exclusion_rows(users_B, multiple)
            if exclude_history
            else np.zeros((len(users_B), 1), np.int32)
        )
        yield users_B, real, user_BxD, hist_BxW

    scores_UxK, rows_UxK = topk.rank(
        batches(),
        prepared.items if prepared.blocks is None else prepared.blocks,
        catalogue.num_items,
        histories.num_users,
        k,
        precision=str(self.config.eval.score_precision),
        progress=self.progress,
        scorer=self.scorer,
    )
    if np.isnan(scores_UxK).any():
      user = histories.user_ids[int(np.argmax(np.isnan(scores_UxK).any(axis=1)))]
      raise errors.NonFiniteError(f"the run scored user {user!r} NaN: its model produces non-finite vectors")
    ids = np.concatenate([np.array([None], object), catalogue.item_ids])[rows_UxK]
    if not self.has_user_vectors:
      return Recommendations(item_ids=ids, scores=scores_UxK), None
    users_UxD = np.zeros((histories.num_users, np.asarray(prepared.items).shape[1]), np.float32)
    for users_B, real, user_BxD in kept:
      users_UxD[users_B[:real]] = np.asarray(user_BxD)[:real]
    return Recommendations(item_ids=ids, scores=scores_UxK), users_UxD


def load(
    workdir: str | os.PathLike,
    settings: ml_collections.ConfigDict | None = None,
    cache_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> Run:
  """A finished run of `python -m recg_jax.main` (or of the experiment grid) in workdir, ready to score.

  Args:
    workdir: the run's folder (results.json, checkpoints/best, transfer/).
    settings: recg_jax/config/serving.py's fields (batch and block sizes); default its defaults.
    cache_root: the folder whose cache/embeddings/ keeps catalogue embeddings; default workdir (a run of
      the experiment grid shares the grid folder's cache).
    progress: show progress bars.
  """
  workdir = paths.as_path(workdir)
  if not workdir.is_dir():
    raise NotAFinishedRunError(f"{workdir} is not a finished run: no such folder")
  config, records = finished_run.config_and_records(workdir)
  variant = str(config.model.variant)
  trained_dir = fusion_lib.trained_run_dir(config, workdir) or workdir
  fusion_fit, item_ids = None, None
  if config.fusion.enabled:
    fusion_fit = fusion_lib.read_fit(workdir)
    if fusion_fit is None:
      raise NotAFinishedRunError(
          f"{workdir}: a fusion run without its fitted weight ({fusion_lib.FUSION_FILE})"
      )
  if pipeline.learns_items(config):
    item_ids = _learned_item_ids(workdir)
  params: dict = {}
  if variant != "text_knn":
    params = finished_run.best_params(trained_dir, config)
    _check_structure(workdir, config, params, len(item_ids) if item_ids is not None else 1)
  seq_transfer = None
  zero_shot = any(r.get("stage") == "zero_shot" for r in records)
  if transfer_lib.sequence_step_enabled(config) and zero_shot:
    seq_transfer = transfer_lib.load_sequence_transfer(workdir)
    if seq_transfer is None:
      raise NotAFinishedRunError(
          f"{workdir}: its evaluation scored with a sequence-level step (RecG), but the run has no saved "
          f"centres and W_f ({workdir / transfer_lib.TRANSFER_DIR}; runs finished before they were saved "
          "lack it): run its `python -m recg_jax.main` command again, which re-evaluates a finished run "
          "and saves them"
      )
  return Run(
      workdir,
      config,
      params,
      seq_transfer,
      settings=settings,
      cache_root=cache_root,
      progress=progress,
      fusion_fit=fusion_fit,
      item_ids=item_ids,
  )


def _learned_item_ids(workdir: paths.Path) -> list[str]:
  path = workdir / pipeline.ITEM_IDS
  if not path.is_file():
    raise NotAFinishedRunError(
        f"{workdir}: its model learned one vector per item, but the run has no list of those items "
        f"({pipeline.ITEM_IDS}; runs finished before it was written lack it): run its command again"
    )
  return list(json.loads(path.read_text(encoding="utf-8"))["item_ids"])


def exporting_methods() -> list[str]:
  """The training-free methods with one vector per user (the history mean): what --export can write."""
  return [
      m
      for m in training_free_methods()
      if presets_lib.PRESETS[m].get("model.knn_aggregate", "mean") == "mean"
  ]


def exporting_presets() -> list[str]:
  """The presets trained as practitioners train them (presets.CE_TRAINING) whose model gives one vector
  per user."""
  out = []
  for name, fields in presets_lib.PRESETS.items():
    if any(fields.get(k) != v for k, v in presets_lib.CE_TRAINING.items()) or fields.get("fusion.enabled"):
      continue
    config = config_lib.apply_preset(config_lib.get_config(), name)
    if scoring.is_dot(recommender_lib.build_model(config, 1).scorer):
      out.append(name)
  return out


def training_free_methods() -> list[str]:
  """The presets `method` serves: those of variant text_knn, which nothing is trained for."""
  return sorted(n for n, p in presets_lib.PRESETS.items() if p.get("model.variant") == "text_knn")


def method(
    name: str = serving_config.DEFAULT_METHOD,
    cache_root: str | os.PathLike | None = None,
    settings: ml_collections.ConfigDict | None = None,
    encoder: str = "",
    progress: bool = True,
) -> Run:
  """A training-free method, ready to score a catalogue with no run at all.

  Args:
    name: a preset of variant text_knn (training_free_methods()); its fields over the default config.
    cache_root: the folder whose cache/embeddings/ keeps catalogue embeddings; default
      paths.user_cache_dir().
    settings: recg_jax/config/serving.py's fields; default its defaults.
    encoder: the text encoder (encoder.model: a hub id, a local folder such as a tuned encoder, or
      package:<name>); default the default config's.
    progress: show progress bars.
  """
  config = config_lib.apply_preset(config_lib.get_config(), name)
  if str(config.model.variant) != "text_knn":
    raise errors.ConfigError(
        f"method {name!r} trains a model (model.variant {config.model.variant!r}): train it with "
        f"`python -m recg_jax.main --config=<config>:preset={name} --workdir=DIR` and serve the run with "
        f"--workdir=DIR; the training-free methods are {training_free_methods()}"
    )
  if encoder:
    config.encoder.model = encoder
  return Run(
      None,
      config,
      {},
      None,
      settings=settings,
      cache_root=cache_root or paths.user_cache_dir(),
      progress=progress,
      label=f"method {name} (no training)",
  )
