"""Synthetic three-domain data, the packaged MiniLM encoder and a tiny SASRec-RecG: minutes on a laptop CPU.

Results from this config are on synthetic data and are labelled so.
"""

from recg_jax import config as config_lib


def get_config(arg: str | None = None):
  config = config_lib.get_config()
  config.data.format = "synthetic"
  config.data.source = "Alpha"
  config.data.targets = ("Beta", "Gamma")
  config.data.max_len = 20
  config.text.max_tokens = 64
  config.encoder.bucket_sizes = (32, 64)
  config.model.hidden_dim = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.dropout = 0.2
  config.model.emb_dropout = 0.2
  config.train.num_epochs = 10
  config.train.learning_rate = 1e-3
  config.train.batch_size = 64
  config.train.patience = 3
  config.gen_loss.samples_per_domain = 32
  config.transfer.num_clusters = 8
  config.transfer.wf_epochs = 2
  config.eval.batch_size = 256
  config.experiment.name = "quickstart"
  return config_lib.apply_config_arg(config, arg)
