"""notebooks/colab_reproduction.ipynb: stored clean, and executed headless as CI runs it.

The executed copy stays in memory; the runs write into tmp_path. The kernel is this interpreter
(`sys.executable -m ipykernel_launcher`, from a kernel spec written for the test), so a fresh venv with
requirements-dev.txt runs it without any `ipykernel install`.
"""

import base64
import json
import pathlib
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_NOTEBOOK = _ROOT / "notebooks" / "colab_reproduction.ipynb"
# Tiny sizes on the quickstart's synthetic data (about 20 s a run on 2 CPU cores).
_TINY = [
    "--config.text.max_tokens=32",
    "--config.encoder.bucket_sizes=(32,)",
    "--config.model.hidden_dim=16",
    "--config.train.num_epochs=2",
    "--config.train.length_buckets=()",
    "--config.eval.length_buckets=()",
    "--config.transfer.num_clusters=4",
    "--config.transfer.kmeans_restarts=1",
    "--config.transfer.wf_epochs=1",
    "--config.gen_loss.samples_per_domain=8",
]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read():
  import nbformat  # pylint: disable=g-import-not-at-top

  return nbformat.read(str(_NOTEBOOK), as_version=4)


def _parameters_index(nb):
  (index,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  return index


def test_stored_notebook_has_no_outputs():
  nb = _read()
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_parameters_cell_sets_every_name_ci_overrides():
  nb = _read()
  names = {}
  exec(nb.cells[_parameters_index(nb)].source, {}, names)  # pylint: disable=exec-used
  assert set(_ci_parameters(pathlib.Path("w"))) <= set(names)
  assert names["REPO_URL"].endswith("/recg-jax.git") and names["INSTALL"] is True


def _ci_parameters(workdir):
  return {
      "REPO_DIR": str(_ROOT),
      "INSTALL": False,
      "PLATFORM": "cpu",
      "WORKDIR": str(workdir),
      "QUICKSTART_FLAGS": _TINY,
      "EXPERIMENT": "synthetic",
      "EXPERIMENT_FLAGS": [*_TINY, "--config.experiment.plot_items_per_domain=30"],
  }


def _inject(nb, parameters):
  """Papermill's convention: a cell tagged injected-parameters right after the parameters cell."""
  from nbformat import v4  # pylint: disable=g-import-not-at-top

  source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
  nb.cells.insert(
      _parameters_index(nb) + 1, v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  )


def _kernel_manager(tmp_path):
  """A kernel of this interpreter, whatever kernel specs the machine has installed."""
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top

  spec_dir = tmp_path / "kernels" / "recg-test"
  spec_dir.mkdir(parents=True)
  spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "recg-jax tests",
      "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
  return KernelManager(kernel_name="recg-test", kernel_spec_manager=specs)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  import nbclient  # pylint: disable=g-import-not-at-top

  tmp_path = tmp_path_factory.mktemp("notebook")
  nb = _read()
  _inject(nb, _ci_parameters(tmp_path / "runs"))
  client = nbclient.NotebookClient(
      nb, km=_kernel_manager(tmp_path), timeout=600, resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  return nb, tmp_path / "runs"


def _outputs(nb, kind):
  """Every output of the executed notebook with this MIME type, as text."""
  found = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.output_type == "stream" and kind == "text/plain":
        found.append(out.text)
      elif kind in out.get("data", {}):
        found.append(out.data[kind])
  return found


@pytest.mark.slow
def test_notebook_says_which_device_it_runs_on(executed):
  nb, _ = executed
  text = "".join(_outputs(nb, "text/plain"))
  assert "JAX build: requirements.txt" in text
  assert "runs on cpu: [CpuDevice(id=0)]" in text


@pytest.mark.slow
def test_notebook_shows_the_quickstart_table(executed):
  nb, workdir = executed
  (table,) = [md for md in _outputs(nb, "text/markdown") if md.startswith("metrics in % (synthetic data)")]
  assert "| stage | domain | model |" in table
  for row in (
      "| in_domain | Alpha | sasrec-recg |",
      "| zero_shot | Beta ← Alpha | sasrec-recg |",
      "| zero_shot | Gamma ← Alpha | sasrec-recg |",
  ):
    assert row in table
  assert (workdir / "quickstart" / "results.json").is_file()


@pytest.mark.slow
def test_notebook_shows_the_experiment_tables_and_plots(executed):
  nb, workdir = executed
  (md,) = [md for md in _outputs(nb, "text/markdown") if md.startswith("# Experiment grid")]
  assert md == (workdir / "zero_shot_synthetic" / "results.md").read_text()
  assert "| target ← source | text_knn | sasrec Sem | sasrec RecG |" in md
  captions = [c for c in _outputs(nb, "text/markdown") if c.startswith("`plots/")]
  assert captions == ["`plots/items_pca.png`", "`plots/pairs_full.png`", "`plots/pairs_sampled100.png`"]
  images = [base64.b64decode(png) for png in _outputs(nb, "image/png")]
  assert len(images) == 3 and all(image.startswith(_PNG_MAGIC) for image in images)
