"""`smoa train` under torchrun (2 gloo processes, tiny model) with plain DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2.

Each engine trains 2 steps, is resumed to 4 with ``--resume`` (a second launch), and must end with the adapter of one
process training 4 steps straight on the same global batch (dropout 0, constant learning rate, so the resumed run
takes the same steps): equal within rtol 1e-4 / atol 1e-6 (measured: ≤ 2e-7, summation order only). The block orders
are bit-equal everywhere; under ZeRO-3 the test also checks that each base weight was partitioned when injection saw
it and whole inside the gather. The adapter then loads into a plain base in this one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.training.conftest import commonsense_rows, tiny_recipe_values
from tests.training.test_training import DDP_SCRIPT, SRC, free_port

CONFIGS = Path(__file__).parents[2] / "configs"
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="DeepSpeed is not installed (python3 -m pip install -e '.[deepspeed]')"
)

# The launch goes through the command line, as a user's does. Two test-only additions: DeepSpeed's shared-memory
# CPU all-reduce is not compiled (a minute of C++ per fresh machine; gloo computes the same sums), and the ZeRO-3
# run records what injection saw of each base weight before and inside its gather.
LAUNCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {src!r})
    try:
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except ImportError:
        pass
    import smoa.adapter.layer as layer

    seen, gather = [], layer.gather_params_ctx

    class Recording:
        def __init__(self, weight):
            self.weight, self.inner = weight, gather(weight)

        def __enter__(self):
            before = self.weight.numel()
            self.inner.__enter__()
            seen.append([before, self.weight.numel(), getattr(self.weight, "ds_numel", before)])

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    layer.gather_params_ctx = Recording
    from smoa.cli.main import main
    code = main(sys.argv[1:])
    import os
    with open({record!r} + f".rank{{os.environ.get('RANK', '0')}}", "w") as f:
        json.dump(seen, f)
    sys.exit(code)
    """
)
COMMON = dict(
    batch_size=4,
    micro_batch_size=2,
    eval_steps=2,
    save_steps=2,
    learning_rate=0.05,
    lr_scheduler="constant",
    warmup_steps=0,
)
ENGINES = {
    "ddp": {},
    "zero2": {"deepspeed": str(CONFIGS / "deepspeed" / "zero2.json")},
    "zero3": {"deepspeed": str(CONFIGS / "deepspeed" / "zero3.json")},
    "fsdp2": {"fsdp": True},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 4 training examples and a global batch of 4: every step sees the same examples in every run
    path = tmp_path_factory.mktemp("distributed-data") / "train.json"
    path.write_text(json.dumps(commonsense_rows(12, seed=3)))
    return path


@pytest.fixture(scope="module")
def single(tiny_model_dir, data, tmp_path_factory) -> Path:
    """One plain process training the 4 steps straight."""
    out = tmp_path_factory.mktemp("single") / "run"
    values = tiny_recipe_values(tiny_model_dir, data, out, max_steps=4, **COMMON)
    proc = subprocess.run(
        [sys.executable, "-c", DDP_SCRIPT.format(src=SRC, values=json.dumps(values))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def launch(recipe: Path, script: Path, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC, SMOA_PROGRESS="0")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    return subprocess.run(
        [*command, str(script), "train", "--recipe", str(recipe), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def write_recipe(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow  # two launches of two processes: ~25 s on 2 cores
@pytest.mark.parametrize(
    "engine",
    ["ddp", pytest.param("zero2", marks=needs_deepspeed), pytest.param("zero3", marks=needs_deepspeed), "fsdp2"],
)
def test_engine_matches_one_process_and_resumes_exactly(tiny_model_dir, data, single, tmp_path, engine):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import smoa  # noqa: F401

    out = tmp_path / "run"
    values = tiny_recipe_values(tiny_model_dir, data, out, **COMMON, **ENGINES[engine])
    script = tmp_path / "launch.py"
    record = tmp_path / "injection"
    script.write_text(LAUNCH_SCRIPT.format(src=SRC, record=str(record)))

    first = launch(write_recipe(tmp_path / "first.yaml", {**values, "max_steps": 2}), script)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (out / "checkpoint-2" / "engine.json").is_file()
    assert json.loads((out / "checkpoint-2" / "engine.json").read_text()) == {"engine": engine, "world_size": 2}
    second = launch(write_recipe(tmp_path / "second.yaml", {**values, "max_steps": 4}), script, "--resume")
    assert second.returncode == 0, second.stderr[-4000:]
    assert "extending" in second.stdout and json.loads((out / "results.json").read_text())["steps"] == 4
    assert second.stdout.count("adapter: ") == 1  # the main process reports, once

    want = load_file(single / "adapter" / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        if "order" in key:  # the spectral block orders: bit-equal to the unsharded run's
            assert torch.equal(got[key], want[key]), key
        else:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    assert any("smoa_row_order" in key for key in got)

    if engine == "zero3":  # each base weight was partitioned when injection saw it, whole inside the gather
        layers = 2 * 5  # q, k, v, up, down of 2 decoder layers
        for rank in (0, 1):
            seen = json.loads(Path(f"{record}.rank{rank}").read_text())
            assert len(seen) == layers * (2 if rank == 0 else 1), seen  # rank 0 also loads a whole copy to evaluate
            assert all(before == 0 and inside == whole > 0 for before, inside, whole in seen[:layers]), seen
        assert json.loads((out / "results.json").read_text())["params_percent"] < 50  # the base counted whole

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # one plain process loads the adapter
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(single / "adapter"))
    ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)


@needs_deepspeed
def test_zero3_in_one_process_without_a_launcher(tiny_model_dir, data, single, tmp_path):
    """`smoa train --set deepspeed=...` alone (one GPU, no torchrun): the same adapter, with DeepSpeed accumulating
    the 2 micro-batches of each step."""
    out = tmp_path / "run"
    values = tiny_recipe_values(tiny_model_dir, data, out, max_steps=4, **COMMON, **ENGINES["zero3"])
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH_SCRIPT.format(src=SRC, record=str(tmp_path / "injection")))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        [sys.executable, str(script), "train", "--recipe", str(write_recipe(tmp_path / "r.yaml", values))],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(env, OMP_NUM_THREADS="1", PYTHONPATH=SRC, SMOA_PROGRESS="0"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    want = load_file(single / "adapter" / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)


@needs_deepspeed
def test_resuming_under_another_engine_is_refused(tiny_model_dir, data, single, tmp_path):
    """A checkpoint's optimizer state is stored per engine: resuming it under another one names both."""
    from smoa.training import load_recipe
    from smoa.training.engines import check_engine_of_checkpoint
    from smoa.training.recipe import RecipeError

    checkpoint = single / "checkpoint-4"
    assert json.loads((checkpoint / "engine.json").read_text()) == {"engine": "ddp", "world_size": 1}
    zero3 = load_recipe(None, **tiny_recipe_values(tiny_model_dir, data, tmp_path / "x", **ENGINES["zero3"]))
    with pytest.raises(RecipeError, match=r"written by plain data parallel on 1 process; resume it with the same"):
        check_engine_of_checkpoint(checkpoint, zero3, 2)
    plain = load_recipe(None, **tiny_recipe_values(tiny_model_dir, data, tmp_path / "x"))
    check_engine_of_checkpoint(checkpoint, plain, 2)  # a full optimizer state: any process count


def test_engine_keys_are_checked_and_left_out_of_the_fingerprint(tiny_model_dir, data, tmp_path, monkeypatch):
    from smoa.training import load_recipe
    from smoa.training.engines import read_deepspeed_config
    from smoa.training.recipe import RecipeError

    values = tiny_recipe_values(tiny_model_dir, data, tmp_path / "x")
    plain = load_recipe(None, **values)
    for engine in ENGINES.values():
        assert load_recipe(None, **values, **engine).fingerprint() == plain.fingerprint()
    with pytest.raises(RecipeError, match=r"deepspeed=.* and fsdp=true are exclusive"):
        load_recipe(None, **values, deepspeed="configs/deepspeed/zero2.json", fsdp=True)
    with pytest.raises(RecipeError, match=r"fsdp_config.*applies with fsdp=true only"):
        load_recipe(None, **values, fsdp_config={"reshard_after_forward": False})
    with pytest.raises(RecipeError, match=r"fsdp='yes' is invalid: it must be true or false"):
        load_recipe(None, **values, fsdp="yes")
    with pytest.raises(RecipeError, match=r"fsdp_config.version=1 is invalid: it must be 2"):
        load_recipe(None, **values, fsdp=True, fsdp_config={"version": 1})
    real_find_spec = importlib.util.find_spec
    missing = lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)  # noqa: E731
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", missing)
        with pytest.raises(RecipeError, match=r"needs DeepSpeed, which is not installed: python3 -m pip install -e"):
            read_deepspeed_config(str(CONFIGS / "deepspeed" / "zero3.json"))
    if HAS_DEEPSPEED:
        with pytest.raises(RecipeError, match=r"deepspeed='nowhere.json': the file does not exist; use configs/"):
            read_deepspeed_config("nowhere.json")
        broken = tmp_path / "broken.json"
        broken.write_text("{stage: 3")
        with pytest.raises(RecipeError, match="is not readable JSON"):
            read_deepspeed_config(str(broken))
        for name in ("zero2", "zero3"):
            config = read_deepspeed_config(str(CONFIGS / "deepspeed" / f"{name}.json"))
            assert config["train_batch_size"] == "auto" and config["gradient_accumulation_steps"] == "auto"


def test_a_missing_deepspeed_json_is_a_one_line_error_with_exit_code_2(tiny_model_dir, data, tmp_path):
    values = tiny_recipe_values(tiny_model_dir, data, tmp_path / "run", deepspeed=str(tmp_path / "none.json"))
    recipe = write_recipe(tmp_path / "r.yaml", values)
    proc = subprocess.run(
        [sys.executable, "-m", "smoa.cli.main", "train", "--recipe", str(recipe)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("smoa train: recipe key deepspeed=")
    assert "does not exist" in last or "not installed" in last
