"""Writes the `.pth` fixtures of tests/metrics_pth.rs into tests/fixtures/pth/.

    python tests/py/make_pth_fixtures.py tests/fixtures/pth            # without PyTorch
    python tests/py/make_pth_fixtures.py tests/fixtures/pth --torch    # also real torch.save files

Without PyTorch, the files are written the way torch/serialization.py writes them (`_save` for
the zip format, `_legacy_save` for the legacy one), with stand-in `torch` and `torch._utils`
modules registered in `sys.modules` so that pickle writes exactly the GLOBAL names PyTorch
writes (`torch._utils _rebuild_tensor_v2`, `torch FloatStorage`, `collections OrderedDict`).
`expected.json` holds every tensor's dtype, shape and values (row-major) for the reader's tests.
With `--torch` (needs PyTorch), the same state dict is also saved by `torch.save` itself in both
formats (`real_zip.pth`, `real_legacy.pth`).

Also written: hostile files the reader must refuse (a pickle calling `os.system`, one calling
`builtins.eval`, an oversized storage, a storage missing from the archive, …).
"""

import collections
import copy
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# --- stand-in torch modules -------------------------------------------------------------------

torch_mod = types.ModuleType("torch")
utils_mod = types.ModuleType("torch._utils")
torch_mod._utils = utils_mod


def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
    raise AssertionError("stand-in")


def _rebuild_parameter(*args):
    raise AssertionError("stand-in")


for f in (_rebuild_tensor_v2, _rebuild_parameter):
    f.__module__ = "torch._utils"
    setattr(utils_mod, f.__name__, f)

STORAGE_CLASSES = {}
for cls_name, dt in [
    ("FloatStorage", "<f4"),
    ("DoubleStorage", "<f8"),
    ("HalfStorage", "<f2"),
    ("BFloat16Storage", "bf16"),
    ("LongStorage", "<i8"),
    ("IntStorage", "<i4"),
    ("ShortStorage", "<i2"),
    ("CharStorage", "i1"),
    ("ByteStorage", "u1"),
    ("BoolStorage", "bool"),
]:
    cls = type(cls_name, (), {"__module__": "torch"})
    setattr(torch_mod, cls_name, cls)
    STORAGE_CLASSES[dt] = cls

sys.modules["torch"] = torch_mod
sys.modules["torch._utils"] = utils_mod


class Storage:
    """A typed storage: raw little-endian bytes, element count and class."""

    def __init__(self, key, dt, raw, numel):
        self.key, self.cls, self.raw, self.numel = key, STORAGE_CLASSES[dt], raw, numel


class Tensor:
    """Pickles as `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`,
    as `torch.Tensor._reduce_ex_internal` does for a plain CPU tensor."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                collections.OrderedDict())
        return (_rebuild_tensor_v2, args)


def bf16_bits(values):
    """bfloat16 bit patterns of float32 values that bfloat16 represents exactly."""
    bits = np.asarray(values, dtype="<f4").view("<u4")
    assert np.all(bits & 0xFFFF == 0), "value not exact in bfloat16"
    return (bits >> 16).astype("<u2")


def make_state():
    """An OrderedDict state dict with `_metadata` (as `Module.state_dict()` returns), several
    dtypes, a transposed (non-contiguous) view, a view at a storage offset, two entries sharing
    one tensor, a scalar and an empty tensor. Returns (state, expected)."""
    rng = np.random.default_rng(20240612)
    storages = []
    expected = collections.OrderedDict()

    def storage(dt, arr):
        key = str(len(storages))
        if dt == "bf16":
            raw = bf16_bits(arr).tobytes()
        else:
            raw = np.ascontiguousarray(arr, dtype=dt).tobytes()
        s = Storage(key, dt, raw, int(np.asarray(arr).size))
        storages.append(s)
        return s

    def add(name, dt, values, tensor):
        expected[name] = {
            "dtype": {"<f4": "float32", "<f8": "float64", "<f2": "float16", "bf16": "bfloat16",
                      "<i8": "int64", "<i4": "int32", "<i2": "int16", "i1": "int8",
                      "u1": "uint8", "bool": "bool"}[dt],
            "shape": list(np.shape(values)),
            # repr() of each value: shortest text that parses back to the same float64.
            "values": [repr(float(v)) for v in np.asarray(values, dtype=np.float64).ravel()],
        }
        return tensor

    def contiguous(name, dt, arr):
        arr = np.asarray(arr)
        s = storage(dt, arr.ravel())
        stride = [int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim)]
        return add(name, dt, arr, Tensor(s, 0, arr.shape, stride))

    state = collections.OrderedDict()
    state["conv.weight"] = contiguous("conv.weight", "<f4",
                                      rng.standard_normal((4, 3, 2, 2)).astype("<f4"))
    state["conv.bias"] = contiguous("conv.bias", "<f4", rng.standard_normal(4).astype("<f4"))
    state["bn.running_var"] = contiguous("bn.running_var", "<f8", rng.random(3) + 0.5)
    state["bn.num_batches_tracked"] = contiguous("bn.num_batches_tracked", "<i8",
                                                 np.array(123456789012, dtype="<i8"))
    state["half"] = contiguous("half", "<f2", rng.standard_normal((2, 3)).astype("<f2"))
    bf = (rng.standard_normal(5).astype("<f4").view("<u4") & 0xFFFF0000).view("<f4")
    state["brain"] = contiguous("brain", "bf16", bf)
    state["ints"] = contiguous("ints", "<i4", np.array([[-7, 0], [65536, 2**31 - 1]], "<i4"))
    state["shorts"] = contiguous("shorts", "<i2", np.array([-300, 300], "<i2"))
    state["chars"] = contiguous("chars", "i1", np.array([-128, 127, 5], "i1"))
    state["bytes"] = contiguous("bytes", "u1", np.array([0, 200, 255], "u1"))
    state["mask"] = contiguous("mask", "bool", np.array([True, False, True]))
    # A transposed view: storage holds a 2x3 matrix, the tensor is its 3x2 transpose.
    base = rng.standard_normal((2, 3)).astype("<f4")
    s = storage("<f4", base.ravel())
    state["transposed"] = add("transposed", "<f4", base.T, Tensor(s, 0, (3, 2), (1, 3)))
    # A strided slice at a storage offset: rows 1..3, every second column of a 4x5 matrix.
    base = rng.standard_normal((4, 5)).astype("<f4")
    s = storage("<f4", base.ravel())
    state["sliced"] = add("sliced", "<f4", base[1:3, ::2], Tensor(s, 5, (2, 3), (5, 2)))
    # Another view of the same storage (a tensor sharing storage with "sliced").
    state["row3"] = add("row3", "<f4", base[3], Tensor(s, 15, (5,), (1,)))
    # The same tensor object under two names (tied weights): pickled once, then by memo.
    state["tied"] = state["conv.bias"]
    expected["tied"] = expected["conv.bias"]
    state["empty"] = contiguous("empty", "<f4", np.zeros((0, 3), "<f4"))
    # What Module.state_dict() attaches; pickled through BUILD on the OrderedDict.
    state._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("conv", {"version": 1}), ("bn", {"version": 2})])
    return state, expected, storages


# --- the two layouts, as torch/serialization.py writes them ------------------------------------

def storage_pid(obj):
    if isinstance(obj, Storage):
        return ("storage", obj.cls, obj.key, "cpu", obj.numel)
    return None


def zip_bytes(obj, storages, archive="archive", data_pkl=None, byteorder=b"little"):
    buf = io.BytesIO()
    if data_pkl is None:
        pkl = io.BytesIO()
        p = pickle.Pickler(pkl, protocol=2)
        p.persistent_id = storage_pid
        p.dump(obj)
        data_pkl = pkl.getvalue()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        def put(name, data):
            # A fixed date keeps regenerated fixtures byte-identical.
            z.writestr(zipfile.ZipInfo(f"{archive}/{name}", (1980, 1, 1, 0, 0, 0)), data)
        put("data.pkl", data_pkl)
        put(".format_version", b"1")
        put(".storage_alignment", b"64")
        if byteorder is not None:
            put("byteorder", byteorder)
        for s in storages:
            put(f"data/{s.key}", s.raw)
        put("version", b"3\n")
        put(".data/serialization_id", b"0123456789")
    return buf.getvalue()


def legacy_bytes(obj, storages, main_pkl=None):
    f = io.BytesIO()
    pickle.dump(MAGIC_NUMBER, f, protocol=2)
    pickle.dump(PROTOCOL_VERSION, f, protocol=2)
    pickle.dump({"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)

    def pid(o):
        if isinstance(o, Storage):
            return ("storage", o.cls, o.key, "cpu", o.numel, None)
        return None

    if main_pkl is None:
        p = pickle.Pickler(f, protocol=2)
        p.persistent_id = pid
        p.dump(obj)
    else:
        f.write(main_pkl)
    keys = sorted(s.key for s in storages)
    pickle.dump(keys, f, protocol=2)
    by_key = {s.key: s for s in storages}
    for k in keys:
        s = by_key[k]
        f.write(struct.pack("<q", s.numel))
        f.write(s.raw)
    return f.getvalue()


# --- hostile pickles (hand-assembled protocol-2 opcodes) ---------------------------------------

def call_global(module, name, arg):
    """PROTO 2; GLOBAL 'module name'; SHORT_BINUNICODE arg; TUPLE1; REDUCE; STOP."""
    a = arg.encode()
    return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"\x8c" + bytes([len(a)]) + a
            + b"\x85R.")


def stack_global_call(module, name, arg):
    """The protocol-4 form: STACK_GLOBAL from two strings."""
    def s(x):
        x = x.encode()
        return b"\x8c" + bytes([len(x)]) + x
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85R."


def one_tensor_pickle(key, numel, cls="FloatStorage"):
    """A state dict {'w': tensor of `numel` float32 in storage `key`}, hand-assembled so the
    declared sizes can lie."""
    def s(x):
        x = x.encode()
        return b"X" + struct.pack("<I", len(x)) + x
    return (b"\x80\x02}" + s("w")
            + b"ctorch._utils\n_rebuild_tensor_v2\n"
            + b"((" + s("storage") + f"ctorch\n{cls}\n".encode() + s(key) + s("cpu")
            + b"\x8a\x08" + struct.pack("<q", numel) + b"tQ"
            + b"K\x00" + b"\x8a\x08" + struct.pack("<q", numel) + b"\x85" + b"K\x01\x85"
            + b"\x89N" + b"tR" + b"s.")


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    state, expected, storages = make_state()

    (out / "state_zip.pth").write_bytes(zip_bytes(state, storages))
    (out / "state_legacy.pth").write_bytes(legacy_bytes(state, storages))
    # A plain dict (as torch-fidelity's weight converter saves), in a big-endian archive.
    plain = {"a": state["conv.bias"], "b": state["bn.running_var"]}
    # Byte-swap the two storages the plain dict uses (float32 and float64), per element.
    be = []
    for key, size in (("1", 4), ("2", 8)):
        s = copy.copy(next(s for s in storages if s.key == key))
        s.raw = b"".join(s.raw[i:i + size][::-1] for i in range(0, len(s.raw), size))
        be.append(s)
    (out / "plain_big_endian_zip.pth").write_bytes(
        zip_bytes(plain, be, archive="plain", byteorder=b"big"))
    with open(out / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)

    # Hostile and broken files.
    evil = {
        "evil_os_system_zip.pth": zip_bytes(None, [], data_pkl=call_global("os", "system",
                                                                           "echo pwned")),
        "evil_eval_legacy.pth": legacy_bytes(None, [], main_pkl=call_global(
            "builtins", "eval", "print('pwned')")),
        "evil_stack_global_zip.pth": zip_bytes(None, [], data_pkl=stack_global_call(
            "posix", "system", "echo pwned")),
        # A storage declaring 2**40 float32 elements (4 TiB).
        "oversized_storage_zip.pth": zip_bytes(None, [Storage("0", "<f4", b"\0" * 16, 4)],
                                               data_pkl=one_tensor_pickle("0", 2**40)),
        # A storage key that has no record in the archive.
        "missing_storage_zip.pth": zip_bytes(None, [Storage("0", "<f4", b"\0" * 16, 4)],
                                             data_pkl=one_tensor_pickle("7", 4)),
        # A record shorter than its declared size.
        "short_record_zip.pth": zip_bytes(None, [Storage("0", "<f4", b"\0" * 12, 3)],
                                          data_pkl=one_tensor_pickle("0", 4)),
    }
    for name, data in evil.items():
        (out / name).write_bytes(data)

    # The real LPIPS v0.1 AlexNet heads (a legacy-format file PyTorch wrote), decoded here by
    # Python's own pickle machinery, for the reader to agree with.
    alex = out / "lpips_v0.1_alex.pth"
    if alex.exists():
        with open(out / "lpips_v0.1_alex.expected.json", "w") as f:
            json.dump(decode_legacy_with_pickle(alex.read_bytes()), f, indent=1)

    if "--torch" in sys.argv:
        write_real(out, expected)


def decode_legacy_with_pickle(data):
    """Decodes a legacy-format state dict of contiguous float32 tensors with `pickle` itself
    (stand-in rebuild function and storages; trusted input only)."""
    f = io.BytesIO(data)
    assert pickle.load(f) == MAGIC_NUMBER
    assert pickle.load(f) == PROTOCOL_VERSION
    pickle.load(f)
    storages = {}

    class U(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda s, off, size, stride, *rest: ("tensor", s, off, size, stride)
            if module == "torch" and name == "FloatStorage":
                return "<f4"
            return super().find_class(module, name)

        def persistent_load(self, pid):
            _, dt, key, _, numel, _ = pid
            storages[key] = (dt, numel)
            return key

    state = U(f, encoding="utf-8").load()
    keys = pickle.load(f)
    raw = {}
    for k in keys:
        (n,) = struct.unpack("<q", f.read(8))
        raw[k] = np.frombuffer(f.read(4 * n), "<f4")
    out = collections.OrderedDict()
    for name, (_, key, off, size, stride) in state.items():
        n = int(np.prod(size))
        out[name] = {"dtype": "float32", "shape": list(size),
                     "values": [repr(float(v)) for v in raw[key][off:off + n]]}
    return out


def write_real(out, expected):
    """The same state dict saved by PyTorch itself, in both formats."""
    for m in ("torch", "torch._utils"):
        del sys.modules[m]
    import torch

    dtypes = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
              "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
              "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
              "bool": torch.bool}
    state = collections.OrderedDict()
    for name, e in expected.items():
        if name in ("transposed", "sliced", "row3", "tied"):
            continue
        values = [float(v) for v in e["values"]]
        t = torch.tensor(values, dtype=torch.float64).to(dtypes[e["dtype"]])
        state[name] = t.reshape(e["shape"])
    state["tied"] = state["conv.bias"]
    def vals(name):
        return torch.tensor([float(v) for v in expected[name]["values"]], dtype=torch.float32)

    base = vals("transposed").reshape(3, 2)
    state["transposed"] = base.T.contiguous().T  # a transposed view of a 2x3 storage
    base = torch.zeros(4, 5)
    base[1:3, ::2] = vals("sliced").reshape(2, 3)
    base[3] = vals("row3")
    state["sliced"] = base[1:3, ::2]
    state["row3"] = base[3]
    state = collections.OrderedDict((name, state[name]) for name in expected)
    state._metadata = collections.OrderedDict([("", {"version": 1})])
    torch.save(state, out / "real_zip.pth")
    torch.save(state, out / "real_legacy.pth", _use_new_zipfile_serialization=False)

    # PyTorch's own loader agrees with expected.json on every file written here.
    for name in ("state_zip.pth", "state_legacy.pth", "real_zip.pth", "real_legacy.pth"):
        sd = torch.load(out / name, weights_only=True)
        assert list(sd) == list(expected), name
        for key, e in expected.items():
            t = sd[key]
            assert str(t.dtype) == "torch." + e["dtype"], (name, key)
            assert list(t.shape) == e["shape"], (name, key)
            assert t.double().flatten().tolist() == [float(v) for v in e["values"]], (name, key)


if __name__ == "__main__":
    main()
