"""Oracle for tests/metrics_pth.rs: reads a .safetensors file with the `safetensors` package and
prints every tensor's dtype, shape and values (repr text; None for bfloat16, which numpy lacks)
and the header's metadata, as JSON."""
import json
import sys

from safetensors import safe_open

out = {"tensors": {}, "order": []}
with safe_open(sys.argv[1], framework="numpy") as f:
    out["metadata"] = f.metadata()
    for name in f.keys():
        s = f.get_slice(name)
        entry = {"dtype": s.get_dtype(), "shape": list(s.get_shape()), "values": None}
        if s.get_dtype() != "BF16":
            entry["values"] = [repr(float(v)) for v in f.get_tensor(name).ravel()]
        out["tensors"][name] = entry
print(json.dumps(out))
