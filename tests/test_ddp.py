"""The bundled-model recipe under torchrun: two CPU processes (gloo) train, resume and agree.

A tiny network on a few synthetic images (no ../shared/data), a few steps per run: the ranks start
from the same weights, draw different crops, and end every run with identical state dicts; rank 0
alone writes the checkpoint and the model file, which loads with the package's loader.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TINY = [
    *("--no-real", "--v1", "--synth", "4", "--synth-val", "1", "--base", "4", "--depth", "2"),
    *("--patch", "32", "--batch", "2", "--threads", "1", "--eval-every", "3"),
]

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def _torchrun(*args: str) -> str:
    """Run the recipe in 2 CPU processes; their combined output."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    res = subprocess.run(
        [*cmd, str(RECIPES / "train_bundled.py"), *TINY, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def _states(folder: Path, name: str) -> list[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return [load_file(str(folder / f"rank{r}{name}.safetensors")) for r in (0, 1)]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"ranks differ in {differ}"


def _assert_trained(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> None:
    params = [k for k in start if start[k].is_floating_point() and "running_" not in k]
    assert params and any(not torch.equal(start[k], end[k]) for k in params), "no weight changed"


def test_two_processes_train_resume_and_agree(tmp_path):
    from napari_unet.api import load_model

    ck, first, second = tmp_path / "run.ckpt", tmp_path / "first", tmp_path / "second"
    out = _torchrun("--steps", "3", "--checkpoint", str(ck), "--dump-weights", str(first), "--out", str(first / "m"))
    assert out.count("data ready") == 1 and "eval step 3" in out  # rank 0 alone logs
    start, end = _states(first, "_start"), _states(first, "")
    _assert_identical(*start)
    _assert_identical(*end)
    _assert_trained(start[0], end[0])
    assert torch.load(ck, weights_only=True)["world_size"] == 2

    model = tmp_path / "model.safetensors"
    out = _torchrun(
        *("--steps", "5", "--checkpoint", str(ck), "--resume"), "--dump-weights", str(second), "--out", str(model)
    )
    assert "resumed at step 3" in out
    start, end = _states(second, "_start"), _states(second, "")
    _assert_identical(*start)
    _assert_identical(*end)
    _assert_identical(start[0], _states(first, "")[0])  # the checkpoint holds where the first run ended
    _assert_trained(start[0], end[0])

    net = load_model(model)
    assert net.info.provenance["processes"] == 2 and net.info.provenance["steps"] == 5
    assert net.config.base == 4 and net.config.depth == 2


def test_each_rank_draws_its_own_data_and_rank_0_the_single_process_data(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    spec = importlib.util.spec_from_file_location("ddp", RECIPES / "ddp.py")
    ddp = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ddp", ddp)  # dataclasses look their module up there
    spec.loader.exec_module(ddp)
    seeds = [ddp.rank_seed(7, r) for r in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert not ddp.setup("cpu").distributed  # no torchrun environment: no process group


def test_a_fine_tune_counts_its_init_weights_as_step_0(tmp_path):
    from napari_unet.core.model import UNet, UNetConfig
    from napari_unet.core.modelfile import ModelInfo, read_model, save_model

    cfg = UNetConfig(base=4, depth=2)
    init = tmp_path / "init.safetensors"
    save_model(UNet(cfg), ModelInfo(config=cfg, diameter=24.0, name="init"), init)
    out = tmp_path / "m.safetensors"
    res = subprocess.run(
        [
            sys.executable,
            str(RECIPES / "train_bundled.py"),
            *TINY,
            "--init",
            str(init),
            "--steps",
            "3",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "eval step 0 (--init)" in res.stdout
    history = read_model(out)[1].provenance["history"]
    assert [h["step"] for h in history] == [0, 3, 3]  # the init, the eval at step 3, the final evaluation
    assert history[0]["loss"] is None and 0.0 <= history[0]["select"] <= 1.0


def test_the_recipe_keeps_v2s_seamless_synthetic_images_unless_asked(monkeypatch):
    """`synth.WIDE` gained a dark seam between touching nuclei after v2 was trained; the recipe's default
    must still draw v2's images (no seam), and `--seam` must give the darker borders."""
    import numpy as np
    import scipy.ndimage as ndi

    monkeypatch.syspath_prepend(str(RECIPES))
    import train_bundled as T

    def seam_ratio(seam):
        ratios = []
        for i in range(100_000, 100_006):
            im, lb = T.wide_synth(i, seam)
            im = im.astype(np.float32)
            level = np.asarray(ndi.mean(im, lb * ndi.binary_erosion(lb > 0, iterations=3), np.arange(lb.max() + 1)))
            a, b = lb[:, :-1], lb[:, 1:]
            m = (a != b) & (a > 0) & (b > 0)
            ratios += list(0.5 * (im[:, :-1][m] + im[:, 1:][m]) / np.minimum(level[a[m]], level[b[m]]))
        return float(np.nanmedian(ratios))

    args = T.parse_args([])
    assert args.seam == (1.0, 1.0)
    plain, seamed = seam_ratio(args.seam), seam_ratio(T.parse_args(["--seam", "0.1,0.5"]).seam)
    assert plain > 0.9 and seamed < plain - 0.15, (plain, seamed)
    with pytest.raises(SystemExit):
        T.parse_args(["--seam", "0.5"])


def test_the_recipe_defocuses_renders_only_when_asked_and_says_so(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import train_bundled as T

    plain, blurred = T.parse_args([]), T.parse_args(["--defocus", "0.3"])
    assert plain.defocus == 0.0 and blurred.defocus == 0.3
    assert not any("defocused" in d for d in T.describe_data(plain)[0])  # v2's command draws v2's renders
    assert any("0.3 of them defocused" in d for d in T.describe_data(blurred)[0])


def test_the_recipe_crowds_renders_only_when_asked_and_says_so(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    import train_bundled as T

    plain, crowded = T.parse_args([]), T.parse_args(["--crowd", "0.4"])
    assert plain.crowd == 0.0 and crowded.crowd == 0.4
    assert not any("crowded" in d for d in T.describe_data(plain)[0])
    assert any("0.4 of them crowded" in d for d in T.describe_data(crowded)[0])
    seamless = T.parse_args(["--crowd", "0.4", "--crowd-seamless", "0.5"])
    assert any("0.4 of them crowded (0.5 of those seamless)" in d for d in T.describe_data(seamless)[0])
    for wrong in (["--crowd-seamless", "0.5"], ["--crowd", "0.4", "--crowd-seamless", "1.5"]):
        with pytest.raises(SystemExit):
            T.parse_args(wrong)


def test_the_recipe_knows_which_renders_it_crowded(monkeypatch, tmp_path):
    """`--distill` spares the crowded renders; `real_variants` must flag exactly those (the flag is
    `perturb`'s first draw, read from a copy of its generator, so a change of draw order breaks it)."""
    import numpy as np
    import tifffile

    from napari_unet.core.synth import synth_nuclei

    monkeypatch.syspath_prepend(str(RECIPES))
    import train_bundled as T

    for sub in ("images", "nuclei", "micronuclei"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        img, lab = synth_nuclei((160, 160), rng=i)
        tifffile.imwrite(tmp_path / "images" / f"{i}.tif", img)
        tifffile.imwrite(tmp_path / "nuclei" / f"{i}.tif", lab.astype(np.uint16))
        tifffile.imwrite(tmp_path / "micronuclei" / f"{i}.tif", np.zeros_like(lab, np.uint16))
    plain_items, plain_flags = T.real_variants(tmp_path, 3, seed=0)
    items, flags = T.real_variants(tmp_path, 3, seed=0, crowd_p=0.5)
    assert len(items) == len(flags) == 6 and not any(plain_flags)
    assert 0 < sum(flags) < 6  # both kinds among these seeds
    for (_, tgt, _, _), (_, tgt0, _, _), f in zip(items, plain_items, flags):
        # crowded renders pack copies of the nuclei into the field: far more foreground than before
        grew = (tgt > 0).mean() > 1.3 * (tgt0 > 0).mean() if tgt.shape == tgt0.shape else None
        assert grew in (f, None)


def test_distilling_from_the_init_model_keeps_the_fine_tune_near_it(tmp_path):
    """`--distill W`: the starting model's probabilities pull the fine-tune back; without it the same
    steps move the outputs further from the starting model's."""
    from safetensors.torch import load_file

    from napari_unet.core.model import UNet, UNetConfig
    from napari_unet.core.modelfile import ModelInfo, read_model, save_model
    from napari_unet.core.synth import synth_nuclei

    cfg = UNetConfig(base=4, depth=2)
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_model(UNet(cfg), ModelInfo(config=cfg, diameter=24.0, name="init"), init)
    with pytest.raises(subprocess.CalledProcessError):  # a teacher is needed
        subprocess.run([sys.executable, str(RECIPES / "train_bundled.py"), "--distill", "1"], check=True, cwd=ROOT)
    for option in (["--teacher-view", "native"], ["--distill-crops", "real"]):  # forms of distillation
        with pytest.raises(subprocess.CalledProcessError):
            subprocess.run([sys.executable, str(RECIPES / "train_bundled.py"), *option], check=True, cwd=ROOT)

    def run(*extra):
        dump = tmp_path / f"dump{len(list(tmp_path.iterdir()))}"  # one folder a run
        res = subprocess.run(
            [sys.executable, str(RECIPES / "train_bundled.py"), *TINY, "--init", str(init), "--steps", "20"]
            + ["--lr", "0.01", "--dump-weights", str(dump), "--out", str(dump / "m.safetensors"), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr[-4000:]
        net = UNet(cfg)
        net.load_state_dict(load_file(str(dump / "rank0.safetensors")))
        return net.eval()

    img = torch.from_numpy(synth_nuclei((64, 64), rng=5)[0].astype("float32"))[None, None]
    img = (img - img.mean()) / img.std()
    teacher = read_model(init)[0].eval()

    def gap(net):
        with torch.no_grad():
            return float((torch.softmax(net(img), 1) - torch.softmax(teacher(img), 1)).abs().mean())

    plain, distilled = gap(run()), gap(run("--distill", "100"))
    assert distilled < 0.6 * plain, (distilled, plain)
    # with --stretch, every other crop is stretched and taught by its labels alone: the rest still pull back
    half = gap(run("--distill", "100", "--stretch", "3"))
    assert half < 0.6 * plain, (half, plain)
    # --teacher-view native: the teacher's answers on the crops before augmentation, warped, pull back as well
    # (crops of 64: the recipe's 16 px at their edges are not taught)
    native = gap(run("--distill", "100", "--stretch", "3", "--teacher-view", "native", "--patch", "64"))
    assert native < 0.6 * plain, (native, plain)
    # --distill-crops real: these runs have synthetic crops only, so nothing is taught by the teacher
    alone = gap(run("--distill", "100", "--distill-crops", "real"))
    assert alone > 0.8 * plain, (alone, plain)


def test_a_widened_fine_tune_starts_from_the_init_function_and_resumes(tmp_path):
    from napari_unet.core.model import UNet, UNetConfig
    from napari_unet.core.modelfile import ModelInfo, read_model, save_model

    cfg = UNetConfig(base=4, depth=2)
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_model(UNet(cfg), ModelInfo(config=cfg, diameter=24.0, name="init"), init)
    ck = tmp_path / "run.ckpt"

    def run(*extra):
        cmd = [sys.executable, str(RECIPES / "train_bundled.py"), *TINY, "--init", str(init), "--checkpoint", str(ck)]
        return subprocess.run([*cmd, *extra], cwd=ROOT, capture_output=True, text=True)

    plain = run("--steps", "3", "--out", str(tmp_path / "plain.safetensors"))
    wide = run("--steps", "3", "--widen", "6", "--out", str(tmp_path / "wide.safetensors"))
    assert plain.returncode == 0 and wide.returncode == 0, (plain.stderr + wide.stderr)[-4000:]
    step0 = [ln for res in (plain, wide) for ln in res.stdout.splitlines() if "eval step 0" in ln]
    assert len(step0) == 2 and step0[0] == step0[1]  # the same function, so the same score
    resumed = run("--steps", "5", "--widen", "6", "--resume", "--out", str(tmp_path / "resumed.safetensors"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed at step 3" in resumed.stdout
    assert read_model(tmp_path / "resumed.safetensors")[0].config.base == 6
    bad = subprocess.run(
        [sys.executable, str(RECIPES / "train_bundled.py"), "--widen", "6"], cwd=ROOT, capture_output=True
    )
    assert bad.returncode != 0 and b"--widen BASE needs --init" in bad.stderr
