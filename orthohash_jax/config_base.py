"""Shared defaults of every experiment config (``configs/*.py`` start from ``base_config()``).

Every key that any config or the command line may set is declared here, so an unknown
``--config.key`` is an error. ``None``-able keys are typed placeholders.
"""
import importlib.util
import os

import ml_collections
from ml_collections import config_dict


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config file, as ``--config=PATH[:ARG]`` gives it (``get_config(ARG)``)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, codebook and data order
  # data
  c.dataset = "digits"
  c.data_dir = config_dict.placeholder(str)
  c.split_seed = 0
  c.num_query_per_class = config_dict.placeholder(int)  # None: the dataset's protocol
  c.num_train_per_class = config_dict.placeholder(int)
  c.num_classes = config_dict.placeholder(int)  # list-file datasets: None = the dataset's own
  c.image_size = config_dict.placeholder(int)   # list-file images are resized to this (32)
  c.expected_sizes = config_dict.placeholder(dict)  # {"train": n, "test": n, "database": n}
  c.allow_duplicates = False                    # list files: a repeated path is an error
  c.decode_threads = config_dict.placeholder(int)
  c.descriptor_dim = config_dict.placeholder(int)       # synthetic descriptors (2048)
  c.synthetic_noise = config_dict.placeholder(float)    # synthetic descriptors (1.0)
  c.synthetic_eval_classes = config_dict.placeholder(int)  # synthetic descriptors (1000)
  c.download = False                            # tfds: allow downloading (never here)
  # model
  c.backbone = "mlp"              # mlp | cnn | identity
  c.hidden = (512, 512)           # MLP widths
  c.num_bits = 64
  c.use_bn = True                 # BatchNorm after the hash layer
  # loss
  c.loss = "orthohash"            # orthohash | ce (linear classifier head; CE / CE+BN baselines)
  c.codebook = "bernoulli"        # bernoulli | gaussian | hadamard | maxmin
  c.scale = 8.0                   # s; the paper uses sqrt(num_bits)
  c.margin = 0.2                  # m
  c.margin_type = "cos"           # cos | arc
  c.multilabel_loss = "label_smoothing"  # label_smoothing | bce
  c.quantization_weight = 0.0     # ablation only
  c.quantization_kind = "cs"      # cs | l1 | l2
  # optimisation
  c.learning_rate = 1e-3
  c.adam_eps = 1e-8               # as torch; larger values damp updates of near-zero gradients
  c.backbone_lr_scale = 1.0       # the authors' code uses 0.1 with a pretrained backbone
  c.weight_decay = 0.0            # coupled (torch Adam style) L2
  c.lr_schedule = "constant"      # constant | step (x0.1 at 80% of training)
  c.batch_size = 64               # global batch; the last incomplete batch of an epoch is dropped
  c.num_epochs = 100
  c.augment_crop_pad = 0          # images: pad + random crop + horizontal flip (0 = off)
  c.steps_per_chunk = 0           # steps per compiled lax.scan call; 0 = one epoch
  # evaluation
  c.eval_topk = config_dict.placeholder(int)  # R of mAP@R; None = whole database
  c.eval_batch_size = 1024
  c.eval_every_epochs = 0         # 0 = only at the end
  c.revisited = config_dict.placeholder(str)  # "ROOT:roxford5k,ROOT:rparis6k": scored after training
  c.recompute_bn = False          # instance data: also score with the hash BN statistics of the database
  # checkpoints and logs
  c.checkpoint_every_steps = 1000  # rounded up to whole chunks
  c.keep_checkpoints = 3
  c.num_devices = -1              # mesh size; -1 = all devices (of all processes)
  c.model_axis = 1                # devices sharding the classes of codebook and logits
  c.export_faiss = False
  return c


def paper_image_config(dataset: str, eval_topk) -> ml_collections.ConfigDict:
  """The category-level setting of the paper's Table 1 with the authors' code defaults (Adam
  lr 1e-4, weight decay 5e-4, lr x0.1 at 80% of 100 epochs, batch 256, s = 8, m = 0.2 cos,
  Bernoulli codebook, pad-4 random crops and flips), but a CNN trained from scratch on 32x32
  images instead of a pretrained AlexNet on 224x224 crops. ``data_dir`` stays unset: the loader reports it."""
  c = base_config()
  c.dataset = dataset
  c.eval_topk = eval_topk
  c.backbone = "cnn"
  c.image_size = 32
  c.learning_rate = 1e-4
  c.weight_decay = 5e-4
  c.lr_schedule = "step"
  c.batch_size = 256
  c.num_epochs = 100
  c.augment_crop_pad = 4
  c.checkpoint_every_steps = 2000
  return c
