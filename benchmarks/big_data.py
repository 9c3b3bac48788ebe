"""Big planes: peak memory of the block engine, and 1 vs 2 dask workers (`python benchmarks/big_data.py`).

Each measurement runs in a fresh subprocess so that its peak RSS (ru_maxrss) and its CPU time are its own
(with a LocalCluster: the client's and the scheduler's, not the workers'). The input is a
uint16 zarr mosaic of the bundled real sample (nuclei of the same density everywhere), read lazily;
the output is an OME-Zarr written block by block. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np, zarr
sys.path.insert(0, {tests!r})
from napari_unet import api
src, out, cluster, block = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
img = zarr.open_array(src, mode="r")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = api.load_model("bundled")
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
c0 = cpu(resource.RUSAGE_SELF)
t = time.perf_counter()
res = api.segment(img, model, diameter=30.0, output=out, cluster=cluster, block=block, return_result=True)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(dict(seconds=dt, run_seconds=res.extra['seconds'], stitch_seconds=res.extra['stitch_seconds'], objects=res.n_objects, peak_mb=peak / 1024,
                      workers_peak_mb=kids / 1024, cpu_s=cpu(resource.RUSAGE_SELF) - c0)))
"""


def make_input(path: Path, size: int) -> None:
    import numpy as np
    import tifffile
    import zarr

    sys.path.insert(0, str(ROOT / "tests" / "core"))
    from test_blockwise import SAMPLE, mosaic

    tile = mosaic(tifffile.imread(SAMPLE), 2048)
    z = zarr.create_array(str(path), shape=(size, size), chunks=(1024, 1024), dtype="uint16")
    for y in range(0, size, 2048):
        for x in range(0, size, 2048):
            z[y : y + 2048, x : x + 2048] = tile[: min(2048, size - y), : min(2048, size - x)]
    del np


def zarr_level0(out: Path):
    import zarr

    return zarr.open_array(str(out / "labels" / "nuclei" / "0"), mode="r")[...]


def run(src: Path, out: Path, cluster: str | None, block: int) -> dict:
    code = CHILD.format(tests=str(ROOT / "tests" / "core"))
    res = subprocess.run(
        [sys.executable, "-c", code, str(src), str(out), cluster or "", str(block)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="4096,8192", help="plane sizes for the memory rows")
    p.add_argument("--workers-size", type=int, default=4096, help="plane size for the 1 vs 2 workers rows")
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--workers-block", type=int, default=1024, help="block size of the 1 vs 2 workers rows")
    args = p.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())  # fmt: skip
    print(f"CPU: {cpu}; block {args.block}; bundled model, diameter 30 px\n")
    print("| run | plane | block | seconds (with start-up) | seconds of the run | of which stitching | Mpx/s of the run | "
          "objects | peak RSS of the process (MB) | workers' peak (MB) | CPU s of the process |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = sorted({int(v) for v in [*args.sizes.split(","), args.workers_size] if int(v) > 0})
        for size in sizes:
            src = tmp / f"in{size}.zarr"
            make_input(src, size)
            mem_sizes = [int(v) for v in args.sizes.split(",") if int(v) > 0]
            runs = [("in process, 2 threads", None, args.block)] if size in mem_sizes else []
            if size == args.workers_size:
                b = args.workers_block
                runs += [
                    ("in process, 2 threads", None, b),
                    ("LocalCluster, 1 worker x 1 thread", "local:1", b),
                    ("LocalCluster, 2 workers x 1 thread", "local:2", b),
                ]
            outs = {}
            for name, cluster, block in runs:
                out = tmp / f"out-{(cluster or 'here').replace(':', '')}-{block}.zarr"
                r = run(src, out, cluster, block)
                outs[name, block] = out
                mpx = size * size / 1e6
                print(
                    f"| {name} | {size}^2 | {block} | {r['seconds']:.1f} | {r['run_seconds']:.1f} | {r['stitch_seconds']:.2f} | "
                    f"{mpx / r['run_seconds']:.2f} | {r['objects']} | {r['peak_mb']:.0f} | {r['workers_peak_mb']:.0f} | "
                    f"{r['cpu_s']:.1f} |",
                    flush=True,
                )
            if size == args.workers_size:  # the same blocks on 1 and 2 workers: the same labels?
                a, b = (
                    zarr_level0(outs[f"LocalCluster, {k}", args.workers_block])
                    for k in ("1 worker x 1 thread", "2 workers x 1 thread")
                )
                print(f"\n{size}^2: labels of 1 and 2 workers identical: {'yes' if np.array_equal(a, b) else 'NO'}\n")
            for out in outs.values():
                shutil.rmtree(out)
            shutil.rmtree(src)


if __name__ == "__main__":
    main()
