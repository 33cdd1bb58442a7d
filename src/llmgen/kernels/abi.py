"""The C side's types as ctypes sees them (kernels.h): the structs a call passes, and each function's signature."""
from __future__ import annotations

import ctypes


class QuantLayer(ctypes.Structure):
    """kernels.h's QuantLayer: what a layer's calls share."""


QuantLayer._fields_ = [
    ("packed", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("minimums", ctypes.c_void_p),
    ("super_scales", ctypes.c_void_p), ("super_minimums", ctypes.c_void_p),
    ("groups", ctypes.c_int64), ("in_features", ctypes.c_int64), ("out_features", ctypes.c_int64),
    ("bias", ctypes.c_void_p), ("norm_weight", ctypes.c_void_p), ("norm_eps", ctypes.c_float),
    ("gated", ctypes.c_int32), ("bits", ctypes.c_int32), ("group", ctypes.c_int32),
    ("next", ctypes.POINTER(QuantLayer))]


class LlamaLayer(ctypes.Structure):
    """llama_layers.cpp's LlamaLayer: one TransformerBlock's four quantized layers, its caches, and what
    Qwen3's and Gemma 3's blocks add to LLaMA's."""

    _fields_ = [("qkv", QuantLayer), ("wo", QuantLayer), ("gate_up", QuantLayer), ("down", QuantLayer),
                ("keys_t", ctypes.c_void_p), ("values", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("norm_eps", ctypes.c_float), ("post_attention_norm", ctypes.c_void_p),
                ("post_ffn_norm", ctypes.c_void_p), ("rope", ctypes.c_void_p), ("window", ctypes.c_int64),
                ("attention_scale", ctypes.c_float)]


# void (*)(float* data, int64_t n): a tensor-parallel all-reduce, called back from llama_layers.cpp.
ALL_REDUCE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


def declare(library: ctypes.CDLL) -> ctypes.CDLL:
    """The argument and result types of the library's functions (kernels.h)."""
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    library.quant_linear.argtypes = [pointer, pointer, size, pointer, flag, flag]
    library.attention_step.argtypes = [pointer, pointer, pointer, pointer, pointer, size, size, size, size, size,
                                       ctypes.c_float, pointer, flag]
    library.llama_decode_layers.argtypes = [ctypes.POINTER(LlamaLayer), size, size, size, size, size, size,
                                            pointer, size, pointer, pointer, flag, ALL_REDUCE]
    library.pack_q4_rows.argtypes = [pointer, size, size, flag, pointer, pointer, pointer, flag]
    library.pack_q4_rows.restype = None
    library.has_gemm.argtypes = []
    library.has_gemm.restype = ctypes.c_int32
    library.set_gemm.argtypes = [ctypes.c_int32]
    library.set_gemm.restype = None
    library.kernel_level.argtypes = []
    library.kernel_level.restype = ctypes.c_char_p
    library.quant_linear.restype = None
    library.attention_step.restype = library.llama_decode_layers.restype = ctypes.c_int32
    return library
