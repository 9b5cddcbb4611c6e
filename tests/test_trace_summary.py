"""bench/trace_summary.py on a synthetic profiler trace: kernel kinds and per-step times."""
import gzip
import json
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def test_kernel_time_by_kind_per_step(tmp_path):
    sys.path.insert(0, BENCH)
    try:
        import trace_summary
    finally:
        sys.path.remove(BENCH)
    kernels = [("sm90_xmma_fprop_implicit_gemm_bf16bf16", 300.0), ("void cudnn::engines_precompiled::nchwToNhwcKernel", 100.0),
               ("void at::native::RowwiseMomentsCUDAKernel<float>", 200.0),
               ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda", 150.0),
               ("void at::native::vectorized_elementwise_kernel<4, silu_kernel>", 250.0),
               ("pytorch_flash::flash_fwd_kernel", 50.0), ("mystery", 10.0)]
    events = [{"cat": "kernel", "name": n, "dur": d} for n, d in kernels] * 2
    events += [{"name": "ProfilerStep#0", "dur": 1500.0}, {"name": "ProfilerStep#1", "dur": 1600.0}]
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump({"traceEvents": events}, fh)
    s = trace_summary.main([str(path), "--out", str(tmp_path / "s.json")])
    kinds = {r["kind"]: r["ms_per_step"] for r in s["by_kind"]}
    assert kinds == {"convolution": 0.3, "elementwise": 0.25, "group norm": 0.2, "dtype casts / copies": 0.15,
                     "layout (NCHW<->NHWC)": 0.1, "attention": 0.05, "other": 0.01}
    assert s["profiled_steps"] == 2 and abs(s["kernel_ms_per_step"] - 1.06) < 1e-12
    assert json.loads((tmp_path / "s.json").read_text())["kernels"] == 14
