"""Import DiffusionKit's MLX code on Linux without its heavy dependencies (torch, coremltools,
transformers, huggingface_hub): register stand-ins for the modules it imports at load time.
Only the code paths the parity tests use are exercised; none of the stubs is called by them."""
import logging
import sys
import types


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def install():
    if "argmaxtools" in sys.modules:
        return
    _module("argmaxtools")
    _module("argmaxtools.utils", get_logger=lambda name=None: logging.getLogger(name or "dk"))
    _module("argmaxtools.test_utils", InferenceContextSpec=type("InferenceContextSpec", (), {}),
            AppleSiliconContextMixin=type("AppleSiliconContextMixin", (), {}))
    _module("diffusionkit.utils", bytes2gigabytes=lambda n: n / 1e9)
    class _Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("not available in the test oracle")
        @classmethod
        def from_pretrained(cls, *a, **k):
            raise RuntimeError("not available in the test oracle")
    _module("transformers", AutoTokenizer=_Unavailable, T5Config=_Unavailable, CLIPTextConfig=_Unavailable)
    _module("huggingface_hub", hf_hub_download=lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no hub in tests")))
    try:
        import tqdm  # noqa: F401
    except ImportError:
        def trange(n, *a, **k):
            r = range(n)
            class _T:
                format_dict = {"elapsed": 0.0}
                def __iter__(self):
                    return iter(r)
            return _T()
        _module("tqdm", trange=trange, tqdm=lambda x, *a, **k: x)
