"""Every kind of run resumes exactly after a SIGKILL: for each experiment's run kinds (embedded profile), a run stage
is killed right after one of its checkpoint writes (``tests/kill_after_saves.py``), run again, and its record compared
with an uninterrupted run's on this machine: every scalar, table cell and array equal, timings and memory aside
(:func:`fedpeft.core.records.differences`). Also: the harness removes a run's checkpoints only once its record is
written, and clears checkpoints written with other settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedpeft.core import checkpoints, registry
from fedpeft.core.records import RunRecord, differences, record_dir
from fedpeft.experiments import runs

ROOT = Path(__file__).resolve().parents[1]

# (experiment, run id, checkpoint writes before the kill, what the writes' paths contain): the kill lands mid-run.
KILLS = [
    ("eurosat_fedavg_ptq", "iid-s0-r3", 1, "checkpoints"),                           # round 1 of 3
    ("eurosat_fedavg_ptq", "iid-s0-r3-qat1", 3, "checkpoints"),                      # QAT arm: rounds 1-2, then the continuation written
    ("code_lm_fedprox", "lora-iid-mu0.1-n24-s0-r3", 2, "checkpoints"),               # round 2 of 3
    ("glue_lora_aggregation", "sst2-svd-iid-r8-s42", 1, "checkpoints"),              # run: round 1 of 3
    ("glue_lora_aggregation", "sst2-error-study-s42", 2, "checkpoints"),             # error_study: case 2 of 4
    ("glue_lora_aggregation", "sst2-one-shot-merge-s42", 2, "checkpoints"),          # merge: client 2 of 3
    ("glue_lora_aggregation", "sst2-centralized-s42-warm", 3, "checkpoints"),        # centralized: both baselines, warm round 1
    ("glue_lora_aggregation", "sst2-lr-study-s42", 2, "checkpoints"),                # lr_study: LoRA at both rates of 4 trainings
    ("glue_lora_aggregation", "sst2-flexlora-iid-mixed-r4-8-16-s42", 1, "checkpoints"),  # mixed_rank: round 1 of 3
    ("weeds_qlora_federated", "setup-qlora-r4", 1, "features"),                      # setup: after the feature cache
    ("weeds_qlora_federated", "fedavg-qlora-r4-fp32-s0", 4, "checkpoints"),          # run: round 4 of 10
    ("lora_vs_qlora", "lm-qlora-s0", 3, "checkpoints"),                              # lm: step 3 of 6
    ("lora_vs_qlora", "unet-lora-s0", 3, "checkpoints"),                             # unet: step 3 of 6
    ("savings_frontier", "sst2-lora-naive-int8ef-every-iid-s42", 1, "checkpoints"),  # point: round 1 of 2, error feedback kept
    ("savings_frontier", "eurosat-full-nf4ef-every-iid-s42", 1, "checkpoints"),      # cnn_point: round 1 of 2, residuals kept
]
# Differ by design: how far the interrupted attempt had come.
RESUME_FIELDS = ("resumed_from_round",)


def _kind(experiment: str, run_id: str) -> str:
    s = registry.get(experiment).load("embedded")
    return runs.find_spec(s, run_id).kind


def test_every_run_kind_has_a_kill_case():
    """A new run kind (or experiment) must come with its row in KILLS."""
    kinds = {(e.name, spec.kind) for e in registry.experiments() for spec in e.run_specs(e.load("embedded"))}
    covered = {(experiment, _kind(experiment, run_id)) for experiment, run_id, _, _ in KILLS}
    assert kinds - covered == set(), f"run kinds without a kill test: {sorted(kinds - covered)}"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Scratch results and cache folders, for this process and for the killed child."""
    env = {"FEDPEFT_RESULTS_DIR": str(tmp_path / "results"), "FEDPEFT_CACHE_DIR": str(tmp_path / "cache"),
           checkpoints.EVERY_S_ENV: "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path, env


def _settings(experiment: str, cache: Path):
    s = registry.get(experiment).load("embedded")
    s.cache_dir = cache
    return s


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "run_id", "saves", "match"), KILLS, ids=[f"{e}:{r}" for e, r, _, _ in KILLS])
def test_a_killed_run_resumes_to_the_uninterrupted_record(experiment, run_id, saves, match, scratch):
    tmp_path, env = scratch
    s = _settings(experiment, tmp_path / "cache")
    spec = runs.find_spec(s, run_id)
    if match == "features":  # the feature cache is the part that setup keeps: build it in the killed attempt
        os.environ["FEDPEFT_CACHE_DIR"] = str(tmp_path / "cache-killed")
        s = _settings(experiment, tmp_path / "cache-killed")
    cmd = [sys.executable, str(ROOT / "tests" / "kill_after_saves.py"), str(saves), match, "fedpeft.experiments.runs",
           "--profile", "embedded", "--experiment", experiment, "--run", run_id, "--no-progress"]
    child = subprocess.run(cmd, env=os.environ | env | {"FEDPEFT_CACHE_DIR": str(s.cache_dir), "PYTHONPATH": str(ROOT / "lib")},
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, f"the run was not killed mid-way (exit {child.returncode}):\n{child.stderr[-2000:]}"
    folder = record_dir("embedded", experiment, run_id)
    assert not (folder / "record.json").exists(), "the killed run wrote its record"
    ckpt = runs.run_checkpoints(s, spec)
    if match == "checkpoints":
        assert ckpt.resumed_parts(), f"no checkpoint in {ckpt.folder} after the kill"

    resumed = runs.run_and_write(s, spec, progress=False)  # the rerun, in this process, finds what the child left
    if match == "checkpoints":
        assert resumed.meta["resumed_from"], "the rerun did not resume"
        assert resumed.scalars.get("resumed_from_round", 1) >= 1
    assert not ckpt.folder.exists(), "the checkpoints outlived the record"

    s_fresh = _settings(experiment, tmp_path / "cache-fresh")
    runs.execute(s_fresh, spec, progress=False).write(tmp_path / "fresh")  # uninterrupted, no checkpoints at all
    diffs, _ = differences(RunRecord.read(tmp_path / "fresh"), RunRecord.read(folder), ignore=RESUME_FIELDS)
    assert diffs == [], f"the resumed record differs from the uninterrupted one: {diffs}"


def test_a_failed_record_write_keeps_the_checkpoints(scratch, monkeypatch):
    """The checkpoints are removed only after the record is written: a write that fails keeps every completed round,
    and the error names the record folder."""
    tmp_path, _ = scratch
    s = _settings("eurosat_fedavg_ptq", tmp_path / "cache")
    spec = runs.find_spec(s, "iid-s0-r3")

    def refuse(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunRecord, "write", refuse)
    with pytest.raises(OSError, match=r"could not be written to .*iid-s0-r3 \(No space left on device\); its checkpoints in"):
        runs.run_and_write(s, spec, progress=False)
    assert runs.run_checkpoints(s, spec).resumed_parts() == ["rounds"]


def test_checkpoints_of_other_settings_are_cleared(tmp_path):
    ckpt = checkpoints.RunCheckpoints(tmp_path / "run", "identity-a")
    assert ckpt.open() is None
    assert ckpt.part("one", lambda: {"x": 1}) == {"x": 1}
    assert checkpoints.RunCheckpoints(tmp_path / "run", "identity-a").resumed_parts() == ["one"]
    other = checkpoints.RunCheckpoints(tmp_path / "run", "identity-b")
    assert other.open() == "it was written by a run with other settings or code"
    assert other.resumed_parts() == []


def test_a_part_is_read_back_with_the_random_state_after_it(tmp_path):
    """A resumed part returns what it computed and leaves the global generators where the first attempt left them."""
    import torch

    ckpt = checkpoints.RunCheckpoints(tmp_path / "run", "id")
    ckpt.open()
    torch.manual_seed(0)
    first = ckpt.part("draw", lambda: torch.rand(3))
    after_first = torch.rand(2)
    torch.manual_seed(123)  # another process, another state
    again = ckpt.part("draw", lambda: pytest.fail("a finished part was computed again"))
    assert torch.equal(first, again) and torch.equal(torch.rand(2), after_first)


def test_outside_the_harness_nothing_is_checkpointed():
    assert checkpoints.active() is None and checkpoints.path("rounds") is None
    assert checkpoints.part("x", lambda: 7) == 7


class _Interrupted(Exception):
    pass


def _interrupt_after(monkeypatch, saves: int) -> None:
    """Make the ``saves``-th step checkpoint the last thing a training call does (as if the process died there)."""
    real, count = checkpoints.save_steps, [0]

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] >= saves:
            raise _Interrupted

    monkeypatch.setattr(checkpoints, "save_steps", save_then_stop)


def test_sft_steps_resume_exactly_across_epochs_and_dropout(tmp_path, monkeypatch):
    """LoRA dropout (the global generator) and an example order that wraps around the data set (numpy's generator)
    both continue where the interrupted call stopped: the adapter and every step's loss equal an uninterrupted run."""
    import torch

    from fedpeft.models.causal_lm import byte_level_tokenizer
    from fedpeft.models.text import attach_lora
    from fedpeft.training import sft

    tokenizer = byte_level_tokenizer()
    data = [torch.tensor(tokenizer(text)["input_ids"]) for text in ("def f(x):\n    return x", "import os", "x = [1, 2]")]

    def model():
        torch.manual_seed(0)
        return attach_lora(sft.tiny_gemma2(tokenizer), 4, 8, 0.3, ["q_proj", "v_proj"], seed=0, task_type="CAUSAL_LM")

    def trainer(path=None):
        return sft.SFTTrainer(steps=6, grad_accum=2, lr=1e-2, warmup_ratio=0.2, checkpoint_path=path, checkpoint_every_s=0)

    reference, ref_trainer = model(), trainer()
    ref_trainer.train(reference, data, torch.Generator().manual_seed(5))
    torch.manual_seed(99)  # the interrupted attempt starts from another global state: the saved one must win
    path = tmp_path / "steps.pt"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(_Interrupted):
        trainer(path).train(model(), data, torch.Generator().manual_seed(5))
    monkeypatch.undo()
    resumed, res_trainer = model(), trainer(path)
    torch.manual_seed(7)
    res_trainer.train(resumed, data, torch.Generator().manual_seed(5))
    assert [r["loss"] for r in res_trainer.records] == [r["loss"] for r in ref_trainer.records]
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)


def test_diffusion_steps_resume_exactly(tmp_path, monkeypatch):
    """The UNet trainer's draws (batches, noise, timesteps) come from the generator saved with its checkpoint."""
    import torch

    from fedpeft.training import diffusion

    comps = diffusion.build_components("tiny", seed=0)
    images, captions = diffusion.generated_images(4, 32, seed=0)
    data = diffusion.LatentCaptions(diffusion.encode_images(comps, images), diffusion.encode_captions(comps, captions))

    def unet():
        import copy

        torch.manual_seed(0)
        return diffusion.attach_unet_lora(copy.deepcopy(comps.unet), 4, 4)

    def trainer(path=None):
        return diffusion.DiffusionTrainer(comps.scheduler, steps=5, batch_size=2, lr=1e-3, checkpoint_path=path, checkpoint_every_s=0)

    reference, ref_trainer = unet(), trainer()
    ref_trainer.train(reference, data, torch.Generator().manual_seed(1))
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(_Interrupted):
        trainer(tmp_path / "steps.pt").train(unet(), data, torch.Generator().manual_seed(1))
    monkeypatch.undo()
    resumed, res_trainer = unet(), trainer(tmp_path / "steps.pt")
    res_trainer.train(resumed, data, torch.Generator().manual_seed(1))
    assert [r["loss"] for r in res_trainer.records] == [r["loss"] for r in ref_trainer.records]
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True))
