"""Every Triton kernel of the package compiles for the H100 (sm_90) — checked on any machine.

Triton's own compiler (bundled ptxas) builds a cubin without a GPU, so type errors and
unsupported constructs of the CUDA path are caught where CI has no GPU; the interpreter
tests check the numbers. The compilation runs in a subprocess: under TRITON_INTERPRET=1
(set by conftest.py without a GPU) the kernels are interpreter objects, not compilable.
"""
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")


def ce_signature(logits: str, acc: str, rows: bool) -> dict:
    sig = {"Z": f"*{logits}", "stride_zn": "i64", "stride_zc": "i64", "T": "*i64",
           "LOSS": f"*{acc}", "SCORE": "*fp32", "GRAD": f"*{logits}",
           "OUT": f"*{logits}", "WS": "*i32", "N": "i32", "C": "i32", "ignore_index": "i64",
           "eps_hi": "fp32", "eps_mid": "fp32", "eps_lo": "fp32"}
    names = (["ROWS"] if rows else []) + ["BLOCK_C", "WRITE_GRAD", "MEAN", "REDUCE", "SMOOTH",
                                          "F64"]
    sig.update({name: "constexpr" for name in names})
    return sig


def cases():
    from is_kernels.ops import alias_table_triton as at
    from is_kernels.ops import online_is_triton as oi
    from is_kernels.ops import output_grad_triton as og
    from is_kernels.ops import sum_tree_triton as st

    for logits, acc in [("fp32", "fp32"), ("bf16", "fp32"), ("fp16", "fp32"), ("fp64", "fp64")]:
        f64 = acc == "fp64"
        for grad, mean, smooth in [(True, True, True), (False, False, False)]:
            flags = {"WRITE_GRAD": grad, "MEAN": mean, "REDUCE": mean, "SMOOTH": smooth,
                     "F64": f64}
            yield (og._ce_tile_kernel, ce_signature(logits, acc, True),
                   {"ROWS": 4, "BLOCK_C": 1024, **flags})
            yield (og._ce_loop_kernel, ce_signature(logits, acc, False),
                   {"BLOCK_C": 4096, **flags})
        yield (og._scale_grad_kernel, {"GRAD": f"*{logits}", "GL": f"*{logits}", "n": "i64",
                                       "C": "i64", "PER_ROW": "constexpr", "F64": "constexpr",
                                       "BLOCK": "constexpr"},
               {"PER_ROW": logits == "bf16", "F64": f64, "BLOCK": 4096})
    for logits, acc in [("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")]:
        for grad, mean in [(True, True), (False, False)]:
            yield (og._soft_ce_kernel,
                   {"Z": f"*{logits}", "stride_zn": "i64", "stride_zc": "i64",
                    "Q": f"*{logits}", "stride_qn": "i64", "stride_qc": "i64",
                    "LOSS": f"*{acc}", "SCORE": "*fp32", "GRAD": f"*{logits}", "N": "i32",
                    "C": "i32", "EPS": f"*{acc}",
                    **{name: "constexpr" for name in ("ROWS", "BLOCK_C", "WRITE_GRAD", "MEAN",
                                                      "F64")}},
                   {"ROWS": 4, "BLOCK_C": 1024, "WRITE_GRAD": grad, "MEAN": mean,
                    "F64": acc == "fp64"})
    for dtype, acc in [("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")]:
        sig = {"P": f"*{dtype}", "Y": f"*{dtype}", "LOSS": f"*{acc}", "SCORE": "*fp32",
               "GRAD": f"*{dtype}", "N": "i32", "D": "i32"}
        sig.update({k: "constexpr" for k in ("ROWS", "BLOCK_D", "WRITE_GRAD", "MEAN", "SUM",
                                             "F64")})
        yield (og._mse_kernel, sig, {"ROWS": 4, "BLOCK_D": 512, "WRITE_GRAD": True,
                                     "MEAN": True, "SUM": False, "F64": acc == "fp64"})
    for leaf in ("fp32", "fp64"):
        for is_min in (False, True):  # the min tree's inner nodes have the leaf dtype
            tree = {"LEAVES": f"*{leaf}", "INNER": f"*{leaf}" if is_min else "*fp64"}
            yield (st._level_kernel, {**tree, "width": "i64", "P": "i64", "capacity": "i64",
                                      "IS_MIN": "constexpr", "BLOCK": "constexpr"},
                   {"IS_MIN": is_min, "BLOCK": st.BLOCK})
            yield (st._validate_kernel, {"IDX": "*i64", "VAL": f"*{leaf}", "WS": "*i32",
                                         "k": "i64", "capacity": "i64", "per_prog": "i64",
                                         "IS_MIN": "constexpr", "F64": "constexpr",
                                         "BLOCK": "constexpr"},
                   {"IS_MIN": is_min, "F64": leaf == "fp64", "BLOCK": st.BLOCK})
            ints = {name: "i64" for name in ("k", "capacity", "P", "H", "d_dense", "per_prog")}
            for fused, online in ((True, False), (False, False), (True, True), (False, True)):
                if online and (leaf == "fp64" or is_min):
                    continue
                state = ({"MEMORY": "*fp32", "SEEN": "*u8", "ACTIVE": "*u8"} if online else
                         {"MEMORY": f"*{leaf}", "SEEN": "*i32", "ACTIVE": "*i32"})
                yield (st._update_kernel,
                       {**tree, "SIDX": "*i64", "PERM": "*i64", "VAL": f"*{leaf}", "WS": "*i32",
                        "ERR": "*i32", **state, **ints, "keep_q": "fp32", "take_s": "fp32",
                        "bad_index_code": "i32", "bad_value_code": "i32",
                        **{name: "constexpr" for name in ("FUSED", "RECORD", "ONLINE", "IS_MIN",
                                                          "F64", "BLOCK")}},
                       {"FUSED": fused, "RECORD": not online, "ONLINE": online,
                        "IS_MIN": is_min, "F64": leaf == "fp64", "BLOCK": st.BLOCK})
            yield (st._query_kernel,
                   {**tree, "START": "*i64", "END": "*i64", "OUT": tree["INNER"],
                    "ERR": "*i32", **{name: "i64" for name in ("n", "capacity", "P", "H")},
                    "bad_code": "i32", "IS_MIN": "constexpr", "RECORD": "constexpr",
                    "BLOCK": "constexpr"},
                   {"IS_MIN": is_min, "RECORD": True, "BLOCK": st.BLOCK})
        yield (st._priorities_kernel,
               {"IDX": "*i64", "RAW": "*fp32", "stride_raw": "i64", "PRIO": f"*{leaf}",
                "PRIO_MIN": f"*{leaf}", "HI": "*fp64", "MAXP": "*fp64", "ERR": "*i32",
                **{name: "i64" for name in ("k", "limit", "first_slot", "capacity")},
                **{name: "fp32" for name in ("alpha_hi", "alpha_mid", "alpha_lo", "eps_hi",
                                             "eps_mid", "eps_lo")},
                "bad_code": "i32", **{name: "constexpr" for name in ("SLOTS", "RECORD", "F64",
                                                                     "BLOCK")}},
               {"SLOTS": leaf == "fp32", "RECORD": True, "F64": leaf == "fp64",
                "BLOCK": st.BLOCK})
        tree = {"LEAVES": f"*{leaf}", "INNER": "*fp64"}
        yield (st._sample_kernel, {**tree, "U": "*fp64", "OUT": "*i64", "ERR": "*i32",
                                   "MIN_INNER": f"*{leaf}", "W": f"*{leaf}",
                                   "n": "i64", "capacity": "i64", "P": "i64", "H": "i64",
                                   "empty_code": "i32", "beta_hi": "fp32", "beta_mid": "fp32",
                                   "beta_lo": "fp32", "RECORD": "constexpr",
                                   "WEIGHTED": "constexpr", "BLOCK": "constexpr"},
               {"RECORD": True, "WEIGHTED": True, "BLOCK": st.SAMPLE_BLOCK})
        yield (st._scan_kernel, {**tree, "MASS": "*fp32", "OUT": "*i64", "ERR": "*i32",
                                 "n": "i64", "capacity": "i64", "P": "i64", "H": "i64",
                                 "bad_code": "i32", "RECORD": "constexpr",
                                 "BLOCK": "constexpr"},
               {"RECORD": True, "BLOCK": st.SAMPLE_BLOCK})
    for unbiased in (True, False):
        yield (oi._draw_kernel,
               {"LEAVES": "*fp32", "INNER": "*fp64", "MEMORY": "*fp32", "ACTIVE": "*i64",
                "U": "*fp64", "IDX": "*i64", "W": "*fp32",
                **{name: "i64" for name in ("b", "n_active", "capacity", "P", "H")},
                **{name: "fp32" for name in ("mix_hi", "mix_mid", "mix_lo", "keep", "floor_p",
                                             "empty_share", "n_float")},
                "UNBIASED": "constexpr", "BLOCK": "constexpr"},
               {"UNBIASED": unbiased, "BLOCK": oi.BLOCK})
    yield (at._classify_kernel, {"S": "*fp64", "TOTAL": "*fp64", "X": "*fp64", "n": "i64",
                                 "BLOCK": "constexpr"}, {"BLOCK": at.BLOCK})
    yield (at._build_kernel, {"S": "*fp64", "TOTAL": "*fp64", "CUM": "*fp64", "PROB": "*fp64",
                              "ALIAS": "*i32", "STATUS": "*i32", "ERR": "*i32", "n": "i64",
                              "bad_code": "i32", "zero_code": "i32", "STEPS": "constexpr",
                              "BLOCK": "constexpr"}, {"STEPS": 21, "BLOCK": at.BLOCK})
    for weight in ("fp32", "fp64"):
        for rows, gp, tile in ((128, 16, True), (1024, 1024, False)):
            yield (at._group_sums_kernel, {"W": f"*{weight}", "SUMS": "*fp64", "n": "i64",
                                           "m": "i64", "group": "i64", "ROWS": "constexpr",
                                           "GP": "constexpr", "TILE": "constexpr"},
                   {"ROWS": rows, "GP": gp, "TILE": tile})
        for one in (True, False):
            yield (at._sample_kernel,
                   {"PROB": "*fp64", "ALIAS": "*i32", "SUMS": "*fp64", "W": f"*{weight}",
                    "U": "*fp64", "OUT": "*i64", "STATUS": "*i32",
                    **{name: "i64" for name in ("n", "m", "size", "group")},
                    "ONE": "constexpr", "BLOCK": "constexpr"}, {"ONE": one, "BLOCK": at.BLOCK})


def compile_all() -> int:
    """Compiles every case; prints one line per case; returns the number of failures."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = 0
    for kernel, signature, constexprs in cases():
        name = f"{kernel.fn.__module__}.{kernel.fn.__name__} {signature} {constexprs}"
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                                constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32))
            assert compiled.asm["cubin"], "empty cubin"
            print("ok", name)
        except Exception as e:  # report every failing kernel, not just the first
            failures += 1
            print("FAILED", name, f"{type(e).__name__}: {e}")
    return failures


def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    compiled = sum(line.startswith("ok ") for line in proc.stdout.splitlines())
    assert compiled == len(list(cases())), proc.stdout


if __name__ == "__main__":
    sys.exit(min(compile_all(), 1))
