"""OrthoHash (``losses.orthohash_loss``): a cosine-similarity head on the fixed class targets of
``config.codebook`` (classes padded to a multiple of ``config.model_axis`` and split over that
mesh axis) and the margined softmax cross-entropy."""
import jax

from orthohash_jax import losses, models, parallel
from orthohash_jax.methods import base, common


def _loss(config, inputs: base.Inputs):
  logits = jax.lax.with_sharding_constraint(inputs.outputs, parallel.logits_sharding(inputs.mesh))
  return losses.orthohash_loss(logits, inputs.labels, scale=config.scale, margin=config.margin,
                               margin_type=config.margin_type,
                               multilabel=common.is_multilabel(inputs.labels),
                               multilabel_loss=config.multilabel_loss,
                               num_classes=inputs.num_classes)


METHOD = base.Method(
    loss=_loss,
    make_head=lambda config, num_classes, codebook, rngs: models.CosSimHead(
        codebook, pad_classes_to=config.model_axis),
    keys=("codebook", "scale", "margin", "margin_type", "multilabel_loss"),
    name="OrthoCos+BN", summary="OrthoHash (Hoe et al., NeurIPS 2021): cosine head on the "
    "codebook's class targets, margined softmax cross-entropy", architecture={"use_bn": True})
