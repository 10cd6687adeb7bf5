"""The CE / CE+BN baselines (``losses.cross_entropy_loss``): a linear classifier (with bias) on
the codes and softmax cross-entropy (multi-hot rows: soft targets y / sum(y))."""
from orthohash_jax import losses
from orthohash_jax.methods import base, common

METHOD = base.Method(
    loss=lambda config, inputs: losses.cross_entropy_loss(
        inputs.outputs, inputs.labels, multilabel=common.is_multilabel(inputs.labels)),
    make_head=base.linear_head(),
    name="CE+BN", summary="CE baseline: linear classifier (with bias) on the codes, softmax "
    "cross-entropy", architecture={"use_bn": True})
