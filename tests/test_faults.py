"""Nothing lost under faults: kill -9 of the real `python -m pretraining` at a random instant and
inside its writes, then --resume, must end bit-identical to an uninterrupted run; a full disk
gives a clear error with the previous checkpoint intact. (`rasd bench faults` runs 50+ trials.)"""

import random

import pytest

from pretraining.faults import FaultRun, disk_full, reference_run, run_trial


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    return work, reference_run(FaultRun(), work)


def _index(events, phase, name_part):
    return next(i for i, (_, p, name) in enumerate(events) if p == phase and name_part in name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_then_resume_ends_with_the_uninterrupted_runs_weights(reference):
    work, ref = reference
    assert any(p == "before-swap" for _, p, _ in ref.rerun_events)  # re-export swaps the folder
    rng = random.Random(14)
    trials = [
        run_trial(FaultRun(), ref, work, 0, "instant", rng),
        # half-way through the second checkpoint's torch.save
        run_trial(FaultRun(), ref, work, 1, "write", rng,
                  event=_index(ref.events, "mid-write", "step_0000008.pt")),
        # the export folder swapped in, the previous one not yet deleted
        run_trial(FaultRun(), ref, work, 2, "rewrite", rng,
                  event=_index(ref.rerun_events, "after-swap", "export")),
    ]
    for trial in trials:
        assert trial.survived, (trial.mode, trial.target, trial.problems)
    assert trials[1].killed and trials[1].complete_at_kill == 4 and trials[1].resumed_from == 4
    assert trials[2].killed and trials[2].resumed_from == 24


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_full_disk_stops_with_a_clear_error_and_the_previous_checkpoint_intact(reference):
    work, ref = reference
    result = disk_full(FaultRun(), ref, work, "RLIMIT_FSIZE")
    assert result.ok, result.problems
    assert "could not write checkpoint" in result.error and "disk is full" in result.error
    assert result.intact == 12
