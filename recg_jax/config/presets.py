"""Named settings of recg-jax beyond the paper's variants, and the paper's own, as config overrides.

`text_mix` is the best trained model in-domain (it beats text_knn under both protocols on both sources,
results/baselines_shared); zero-shot, no trained preset beats text_knn (docs/method.md, "Findings").
"""

from typing import Any

# Target weights of a 'mix' model's trained share of the score (1 = as trained, 0 = text_knn alone).
MIX_WEIGHTS = (0.0, 0.25, 0.5)
# Named settings: each is a set of config overrides (section.field -> value). docs/method.md says what
# each tests; recg_jax.baselines runs them side by side, and `--config=configs/<file>.py:preset=<name>`
# applies one to any config.
PRESETS: dict[str, dict[str, Any]] = {
    # No training.
    "text_knn": {"model.variant": "text_knn"},
    "text_knn_center": {"model.variant": "text_knn", "model.table_transform": "center"},
    # The paper's models (BPR, five uniform negatives, candidates W_p e + b_p).
    "sem": {"model.variant": "sem"},
    "recg": {"model.variant": "recg"},
    # The loss alone: full softmax cross-entropy.
    "sem_softmax": {"model.variant": "sem", "train.loss": "softmax"},
    "recg_softmax": {"model.variant": "recg", "train.loss": "softmax"},
    # Scoring in the frozen text space (softmax, cosine with a learned temperature).
    "text_residual": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "residual",
    },
    "text_attention": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "attention",
    },
    "text_mix": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    "text_mix_center": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "model.table_transform": "center",
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    # RecG's own parts (the merge of W_p e and W_a e for history items, L_gen on W_a, the sequence-level
    # step) on the mix model.
    "recg_text_mix": {
        "model.variant": "recg",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    # Training-free variants of text_knn, centred (the leave-one-domain-out study's text baselines): the
    # recency decay, a multi-interest aggregate instead of the history mean, and the text fields embedded.
    "text_knn_center_d1": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 1.0,
    },
    "text_knn_center_d08": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 0.8,
    },
    "text_knn_center_d03": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 0.3,
    },
    "text_knn_center_last": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_decay": 0.0,
    },
    "text_knn_center_max": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "max",
    },
    "text_knn_center_soft005": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.05,
    },
    "text_knn_center_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    # ... with each domain's table standardised or whitened on its own items instead of only centred.
    "text_knn_std_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "standardize",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_whiten_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "whiten",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_whiten1_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "whiten",
        "model.whiten_shrinkage": 1.0,
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    # ... whitened with a shrinkage estimated from each catalogue's own items (OAS, Ledoit-Wolf): centring
    # where the items are few for their dimensions, closer to plain whitening as they grow.
    "text_knn_whiten_oas_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "whiten_oas",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_whiten_lw_soft02": {
        "model.variant": "text_knn",
        "model.table_transform": "whiten_lw",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
    },
    "text_knn_center_title": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "data.text_fields": ("title",),
    },
    # Trained on several domains: RecG's L_gen also over the held-out target's item texts (the paper's
    # setting; the study's runs leave them out by default), and the text-space models with the input
    # history left out of the softmax's classes.
    "recg_target_text": {"model.variant": "recg", "gen_loss.include_targets": True},
    "text_mix_center_masked": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "mix",
        "model.table_transform": "center",
        "train.softmax_mask_history": True,
        "transfer.target_model_weights": MIX_WEIGHTS,
    },
    "text_attention_center_masked": {
        "model.variant": "sem",
        "train.loss": "softmax",
        "model.score_space": "text",
        "model.text_user": "attention",
        "model.table_transform": "center",
        "train.softmax_mask_history": True,
    },
    # The learned aggregation: the text baseline's soft maximum, its decay and temperature fitted by full
    # softmax on the sources (recg_jax/knn_fit.py), starting from the baseline's values.
    "text_knn_center_fit": {
        "model.variant": "text_knn",
        "model.table_transform": "center",
        "model.knn_aggregate": "softmax",
        "model.knn_temperature": 0.2,
        "knn_fit.enabled": True,
    },
    # In-domain references: SASRec with item-ID embeddings.
    "id": {"model.variant": "id"},
    # ... trained to convergence where a study caps epochs (an ID model learns slowly from few
    # interactions per item: its early-stopping curve is flat for several epochs).
    "id_long": {"model.variant": "id", "train.num_epochs": 200, "train.patience": 10},
}

# SASRec as practitioners train it today (RecBole's SASRec): its blocks (FFN 4d with GELU, LayerNorm epsilon
# 1e-12, N(0, 0.02) kernels), d=64, two layers, two heads, dropout 0.5, Adam at 1e-3, batch 128, softmax
# cross-entropy over the whole catalogue, early stopping on validation NDCG@10 with patience 10, up to 200
# epochs. Every field is set here, so that no study can train its reference weaker than another study.
CE_TRAINING: dict[str, Any] = {
    "model.backbone": "sasrec",
    "model.hidden_dim": 64,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.dropout": 0.5,
    "model.emb_dropout": 0.5,
    "model.pre_ln": False,
    "model.sasrec_ffn_multiplier": 4,
    "model.sasrec_activation": "gelu",
    "model.sasrec_ln_epsilon": 1e-12,
    "model.sasrec_init_std": 0.02,
    "train.loss": "softmax",
    "train.learning_rate": 1e-3,
    "train.batch_size": 128,
    "train.num_epochs": 200,
    "train.patience": 10,
    "train.targets": "all_prefixes",
}
# The training-free text baseline the hybrids join: the day-one default `recommend` serves (the safest on
# the validation domains, whole and item-subsampled: docs/method.md); its text fields, without its variant.
TEXT_BASELINE = "text_knn_center_soft02"
_TEXT_FIELDS = {k: v for k, v in PRESETS[TEXT_BASELINE].items() if k != "model.variant"}
# An in-domain model learns one vector per item of its catalogue: every user trains it (the per-source cap
# of multi-source studies does not apply).
_EVERY_USER = {"train.max_users_per_source": 0}
PRESETS.update(
    {
        # The references: SASRec-ID and SASRec-Sem trained with cross-entropy (the paper's BPR models are
        # `id`, `sem`, `recg` above).
        "id_ce": {"model.variant": "id", **CE_TRAINING, **_EVERY_USER},
        "sem_ce": {"model.variant": "sem", **CE_TRAINING},
        # Hybrids of text and interactions (docs/method.md, "Text and interactions together"), in-domain.
        # Late fusion: id_ce's scores and the text baseline's, standardised per user, theta fitted on the
        # validation split (recg_jax/fusion.py).
        "fusion": {
            "model.variant": "id",
            **CE_TRAINING,
            **_EVERY_USER,
            "fusion.enabled": True,
            "fusion.text_preset": TEXT_BASELINE,
        },
        # The same, its theta fitted on a fifth of the users held out of id_ce's training (which it then
        # trains itself): for small budgets, where the users the ID model trained on flatter it.
        "fusion_holdout": {
            "model.variant": "id",
            **CE_TRAINING,
            **_EVERY_USER,
            "fusion.enabled": True,
            "fusion.text_preset": TEXT_BASELINE,
            "fusion.holdout_users": 0.2,
        },
        # SASRec-ID whose item table starts from the whitened text embeddings reduced to d.
        "id_text_init": {
            "model.variant": "text_id",
            **CE_TRAINING,
            **_EVERY_USER,
            "model.text_id_frozen_dims": 0,
        },
        # AlphaFuse: the leading half of those text coordinates frozen, ids learned in the other half.
        "alphafuse": {
            "model.variant": "text_id",
            **CE_TRAINING,
            **_EVERY_USER,
            "model.text_id_frozen_dims": CE_TRAINING["model.hidden_dim"] // 2,
        },
        # Ids on top of text: the text baseline's score as a fixed logit offset (one learned scale), an
        # ID model trained on top of it with cross-entropy.
        "id_text_offset": {
            "model.variant": "id",
            **CE_TRAINING,
            **_EVERY_USER,
            **_TEXT_FIELDS,
            "model.score_space": "text",
            "model.text_user": "offset",
        },
        # The text-mix model with an ID model as its trained half, trained jointly: text_knn's cosine with
        # the history mean in the text baseline's table (centred; a learned scale) plus the ID score.
        "text_mix_id": {
            "model.variant": "id",
            **CE_TRAINING,
            **_EVERY_USER,
            "model.table_transform": _TEXT_FIELDS["model.table_transform"],
            "model.score_space": "text",
            "model.text_user": "mix",
        },
    }
)
# The hybrid the in-domain study finds best (docs/method.md, "Text and interactions together"):
# `--config=configs/amazon_shared.py:source=X,preset=hybrid --config.experiment.mode=in_domain`.
BEST_HYBRID = "fusion"
PRESETS["hybrid"] = dict(PRESETS[BEST_HYBRID])
