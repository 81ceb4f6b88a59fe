"""Load torch-fidelity 0.4.0's metric modules (metric_fid, metric_isc, metric_kid) without
PyTorch: PyPI's torch needs gigabytes of CUDA wheels, and these functions use torch only to
hold the feature matrix. The stand-in `torch` below is a numpy array with the handful of
tensor methods those functions call (`is_tensor`, `dim`, `shape`, indexing, `double`,
`softmax`, `log_softmax`, `mean`, `sum`, `log`, `exp`, `item`, `cpu`, `numpy`), written as
torch defines them (softmax and log_softmax subtract the row maximum). Everything else in the
metric code (permutation, splits, statistics, kernels, mmd2, the eigenvalue trace) is
torch-fidelity's own, unchanged. The package's __init__ (feature extractors, torchvision,
DataLoader) is never run."""
import os
import sys
import types

import numpy as np


class Tensor:
    def __init__(self, a):
        self.a = np.asarray(a)

    # shape and conversion
    @property
    def shape(self):
        return self.a.shape

    def dim(self):
        return self.a.ndim

    def __len__(self):
        return len(self.a)

    def numpy(self):
        return self.a

    def cpu(self):
        return self

    def double(self):
        return Tensor(self.a.astype(np.float64))

    def item(self):
        assert self.a.size == 1
        return self.a.reshape(()).item()

    def __getitem__(self, idx):
        return Tensor(self.a[idx])

    # arithmetic used by isc_features_to_metric
    def _v(self, o):
        return o.a if isinstance(o, Tensor) else o

    def __mul__(self, o):
        return Tensor(self.a * self._v(o))

    def __sub__(self, o):
        return Tensor(self.a - self._v(o))

    def softmax(self, dim):
        e = np.exp(self.a - self.a.max(axis=dim, keepdims=True))
        return Tensor(e / e.sum(axis=dim, keepdims=True))

    def log_softmax(self, dim):
        s = self.a - self.a.max(axis=dim, keepdims=True)
        return Tensor(s - np.log(np.exp(s).sum(axis=dim, keepdims=True)))

    def mean(self, dim=None, keepdim=False):
        return Tensor(self.a.mean(axis=dim, keepdims=keepdim))

    def sum(self, dim=None, keepdim=False):
        return Tensor(self.a.sum(axis=dim, keepdims=keepdim))

    def log(self):
        return Tensor(np.log(self.a))

    def exp(self):
        return Tensor(np.exp(self.a))


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _unused(*a, **k):
    raise RuntimeError("not available in the test oracle")


def load():
    """Returns (metric_fid, metric_isc, metric_kid) from the installed torch-fidelity."""
    if "torch" not in sys.modules:
        _module("torch", Tensor=Tensor, is_tensor=lambda x: isinstance(x, Tensor))
        _module("tqdm", tqdm=lambda it, *a, **k: it)
        import importlib.util

        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            raise RuntimeError("torch-fidelity is not installed (scripts/oracle-requirements-nodeps.txt)")
        # A bare package object: submodules load from the real folder, __init__ does not run.
        pkg = _module("torch_fidelity")
        pkg.__path__ = [os.path.dirname(spec.origin)]
        names = [
            "get_cacheable_input_name", "cache_lookup_one_recompute_on_miss",
            "extract_featuresdict_from_input_id_cached", "create_feature_extractor",
            "resolve_feature_extractor", "resolve_feature_layer_for_metric",
        ]
        _module("torch_fidelity.utils", **{n: _unused for n in names})
    from torch_fidelity import metric_fid, metric_isc, metric_kid, version

    assert version.__version__ == "0.4.0", version.__version__
    return metric_fid, metric_isc, metric_kid
