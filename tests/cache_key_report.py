"""Print, as JSON, the Triton cache keys of the named kernels, computed in the order given
(``python tests/cache_key_report.py ws gluon dequant``); run without the interpreter."""

import importlib
import json
import sys

KERNELS = {
    "gemm": ("anybit._matmul.gemm_triton", "gemm_kernel"),
    "dequant": ("anybit._matmul.gemm_triton", "dequant_kernel"),
    "gluon": ("anybit._matmul.gemm_gluon", "gemm_gluon_kernel"),
    "ws": ("anybit._matmul.gemm_gluon_ws", "gemm_gluon_ws_kernel"),
    "gemv": ("anybit._matmul.gemv_triton", "gemv_kernel"),
    "attention": ("anybit._attention.decode_triton", "decode_attention_kernel"),
}

if __name__ == "__main__":
    keys = {}
    for name in sys.argv[1:]:
        module, kernel = KERNELS[name]
        keys[name] = getattr(importlib.import_module(module), kernel).cache_key
    print(json.dumps(keys, sort_keys=True))
