"""Datasets for fedleak: ``load_dataset(DataConfig, seed) -> Dataset`` and client partitions.

Registered datasets (``available_datasets()``; ``fedleak datasets`` lists what is found where):

- ``digits`` (default): scikit-learn's 1,797 8x8 digits, /16 to [0,1], seeded stratified split
  (``test_fraction``).
- ``synthetic``: seeded class pattern + Gaussian noise (``data.synthetic``: n_train, n_test,
  num_classes, channels, size, noise).
- ``mnist``, ``fashion-mnist``: the four official IDX files (``MNIST/raw/``, ``mnist/``,
  ``FashionMNIST/raw/``, ``fashion-mnist/`` or the data dir itself); downloadable.
- ``cifar10``, ``cifar100`` (fine labels): ``cifar-10-batches-py/`` / ``cifar-100-python/`` or the
  official ``.tar.gz`` (extracted safely next to it); read with a restricted unpickler; downloadable.
- ``ham10000``: ``HAM10000_metadata.csv`` + ``images/`` (or ``HAM10000_images_part_1/2``);
  64x64 by default; split stratified by dx and grouped by lesion_id.
- ``imagefolder``: ``data.root/<class>/<image>``, 64x64 by default, seeded shuffle then the last
  ``test_fraction`` is test.
- ``dermnet``: the FedMIA Dermnet protocol on ``data.root`` (or ``<data dir>/dermnet``) holding
  Kaggle's ``train/`` and ``test/``: both listed like ImageFolder and concatenated, shuffled with
  ``torch.manual_seed(42); torch.randperm(N)`` whatever the seed, first 15,000 train / last 4,000
  test (proportionally fewer below 19,000 images), 64x64.

Data dir: ``data.data_dir``, else ``$FEDLEAK_DATA_DIR``, else ``<user cache dir>/data``.
``data.download`` fetches missing official files (md5-checked; ``data.mirror`` replaces the base URL).

Normalisation (``data.normalization``; pixels stay in [0,1], ``Dataset.normalize`` applies it):
``default`` = MNIST (0.1307,)/(0.3081,); Fashion-MNIST (0.2860,)/(0.3530,); CIFAR-10, CIFAR-100 and
Dermnet ``cifar10-fedmia`` (0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.2010) (the FedMIA original's
constants, for parity); digits, synthetic, HAM10000, imagefolder: ``dataset`` statistics of the training
split. Also ``none`` (0/1), ``dataset``, and every key of the one table
``fedleak.data.normalization.NORMALIZATIONS`` (``cifar10`` = the true CIFAR-10 statistics
(0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616), ``cifar100``, ``mnist``, ``fashion-mnist``, the
inversion originals' ``*-ig``). Details: ``fedleak.data.registry``.
"""

from fedleak.lazy import lazy_exports

# Exported names -> their module, imported on first access (PEP 562): ``import fedleak.data.commands`` (the
# ``fedleak datasets`` command, ``fedleak --help``) must not import torch through this package.
_EXPORTS = {
    "DataError": "fedleak.data.base",
    "Dataset": "fedleak.data.base",
    "Split": "fedleak.data.base",
    "dirichlet_partition": "fedleak.data.partition",
    "iid_partition": "fedleak.data.partition",
    "ENV_VAR": "fedleak.data.paths",
    "resolve_data_dir": "fedleak.data.paths",
    "NORMALIZATION_CHOICES": "fedleak.data.registry",
    "NORMALIZATIONS": "fedleak.data.registry",
    "available_datasets": "fedleak.data.registry",
    "describe_datasets": "fedleak.data.registry",
    "load_dataset": "fedleak.data.registry",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
