"""The run's budget arithmetic: the search's share, the final training's epochs and clock."""

import pytest

from pipeline import budget as budgets
from pipeline.config import BudgetParams

TIME = BudgetParams(mode="time", minutes=11, reserve_minutes=1, search_share=0.4)


def test_the_search_gets_its_share_of_the_budget_less_the_reserve():
    clock = budgets.start_clock(TIME, now=1000.0)
    assert clock.started_at == 1000.0
    assert clock.search_deadline == pytest.approx(1000 + 600 * 0.4)
    assert clock.deadline == pytest.approx(1000 + 600)  # train ends by then; reserve after


def test_a_resumed_search_counts_what_it_spent_before():
    clock = budgets.start_clock(TIME, now=1000.0, spent_before=100.0)
    assert clock.search_deadline == pytest.approx(1000 + 240 - 100)
    assert clock.deadline == pytest.approx(1000 + 600 - 100)


def test_epochs_mode_has_no_clock_and_trains_every_epoch():
    epochs = BudgetParams(mode="epochs")
    assert budgets.start_clock(epochs, now=0.0) is None
    best = {"epoch_seconds": 100.0, "train_samples": 10}
    plan = budgets.plan_training(epochs, None, best, 1000, max_epochs=20, now=0.0)
    assert (plan.epochs, plan.deadline) == (20, None)


def test_the_epoch_estimate_scales_with_the_training_images_and_adds_the_warmup_once():
    best = {"epoch_seconds": 2.0, "first_epoch_seconds": 5.0, "train_samples": 1000}
    estimate = budgets.estimate_epoch(best, 4000)
    assert estimate.epoch_s == pytest.approx(8.0)
    assert estimate.warmup_s == pytest.approx(3.0)
    assert budgets.estimate_epoch({"epoch_seconds": None}, 4000) is None


def test_the_validation_pass_is_not_scaled_with_the_training_images():
    # A screening round on 1000 images: half its 2 s epoch was the validation pass, which
    # the final training's epoch on 4000 images has once, not four times.
    best = {"epoch_seconds": 2.0, "val_seconds": 1.0, "train_samples": 1000}
    estimate = budgets.estimate_epoch(best, 4000)
    assert estimate.epoch_s == pytest.approx(4.0 + 1.0)
    assert estimate.per_sample_s == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("left", "expected"), [(83.0, 10), (11.0, 1), (-5.0, 1), (1000.0, 20), (82.9, 9)]
)
def test_planned_epochs_fill_what_is_left_between_one_and_train_epochs(left, expected):
    estimate = budgets.EpochEstimate(epoch_s=8.0, warmup_s=3.0, per_sample_s=0.002)
    assert budgets.plan_epochs(left, estimate, max_epochs=20) == expected


def test_train_runs_on_tunes_clock_right_after_it_else_on_its_own_share():
    tuned = {**TIME.model_dump(mode="json"), "deadline": 2000.0, "ended_at": 1500.0}
    assert budgets.train_deadline(TIME, tuned, now=1510.0) == (2000.0, "tune")
    # DVC reused tune's outputs from an earlier run: the train stage's own share.
    late = 1500.0 + budgets.SAME_RUN_GAP_S + 1
    assert budgets.train_deadline(TIME, tuned, now=late) == (late + 600 * 0.6, "own share")
    # Tuned under other budget settings: not this run's clock.
    other = {**tuned, "minutes": 30}
    assert budgets.train_deadline(TIME, other, now=1510.0)[1] == "own share"
    assert budgets.train_deadline(TIME, None, now=1510.0)[1] == "own share"


def test_the_plan_keeps_time_to_save_the_model_before_the_deadline():
    tuned = {**TIME.model_dump(mode="json"), "deadline": 1100.0, "ended_at": 1000.0}
    best = {"epoch_seconds": 10.0, "first_epoch_seconds": 10.0, "train_samples": 100}
    plan = budgets.plan_training(TIME, tuned, best, 100, max_epochs=50, now=1000.0)
    assert plan.left_s == pytest.approx(100 - budgets.FINISH_S)
    assert plan.epochs == int((100 - budgets.FINISH_S) // 10)
    assert plan.fit_deadline == pytest.approx(1100 - budgets.FINISH_S)


def test_the_next_epoch_must_fit_before_the_deadline():
    # Typical epoch: the mean after the first (which also compiles).
    assert budgets.next_epoch_fits(100.0, 106.0, [9.0, 5.0, 5.0])
    assert not budgets.next_epoch_fits(100.0, 104.0, [9.0, 5.0, 5.0])
    # Only the first epoch so far: it is the estimate (on the safe side).
    assert not budgets.next_epoch_fits(100.0, 108.0, [9.0])


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_deadline_stops_training_when_the_next_epoch_would_not_end_in_time():
    from types import SimpleNamespace

    from pipeline.budget_callbacks import DeadlineStop

    clock = FakeClock()
    stop = DeadlineStop(deadline=clock.now + 10.0, clock=clock, now=clock)
    stop.set_model(SimpleNamespace(stop_training=False))
    stop.set_params({"epochs": 100})
    for epoch in range(100):
        stop.on_epoch_begin(epoch)
        clock.advance(3.0)
        stop.on_epoch_end(epoch)
        if stop.model.stop_training:
            break
    # Three epochs of 3 s end at 9 s; a fourth would end at 12 s, past the 10 s deadline.
    assert stop.fired and epoch == 2 and stop.epoch_times == [3.0, 3.0, 3.0]


def test_an_epoch_is_timed_without_the_batches_that_stalled_to_compile():
    """On JAX a GPU step takes ~2 ms but a recompile stalls one batch for seconds (H200,
    2026-11-27): a short trial's epoch time would plan the final training 15x too short."""
    from pipeline.budget_callbacks import DeadlineStop
    from pipeline.tuning.tuner import epoch_timing

    clock = FakeClock()
    stop = DeadlineStop(None, clock=clock)
    stop.on_epoch_begin(0)
    for pause in [0.3, 0.01, 0.01, 0.01, 0.01]:  # the first batch compiles
        clock.advance(pause)
        stop.on_train_batch_end(0)
    stop.on_test_begin()
    for _ in range(2):
        clock.advance(0.01)
        stop.on_test_batch_end(0)
    stop.on_epoch_end(0)
    (took,), (steady,) = stop.epoch_times, stop.steady_times
    assert took == pytest.approx(0.36)
    assert steady == pytest.approx(0.07)  # seven batches at 10 ms: the stall counts as one
    assert stop.val_times[0] == pytest.approx(0.02)  # two validation batches at 10 ms

    # A trial's steady epoch: the lower of its later epochs and its median-batch epochs.
    assert epoch_timing([[10.7, 6.2]], [[0.6, 0.6]]) == {
        "first_epoch_seconds": 10.7,
        "epoch_seconds": 0.6,
    }
    assert epoch_timing([[10.7, 6.2]])["epoch_seconds"] == 6.2
    assert epoch_timing([[10.7, 6.2]], None, [[1.5, 1.1]])["val_seconds"] == pytest.approx(1.3)


def test_batch_times_under_a_cpu_quota_count_the_waits_but_not_compile_stalls():
    """Under a cgroup quota of a quarter of a 2-core VM most batches ran at full speed and
    every few one waited out the quota's period: the median batch planned 8.0 s epochs
    that took 22.5 s. The waits recur, so they count; a compile stall or two does not."""
    throttled = ([0.002] * 12 + [0.077]) * 20  # 12 batches at 2 ms, then a 75 ms wait
    assert budgets.steady_sum(throttled) == pytest.approx(sum(throttled), rel=0.1)
    assert budgets.steady_sum([5.6] + [0.002] * 99) == pytest.approx(0.2)  # one stall
    assert budgets.steady_sum([0.3, 4.0] + [0.01] * 8) == pytest.approx(0.1)  # two
    assert budgets.steady_sum([]) == 0.0
    # The cost probe: 5 batches of a CNN, 2 of them waiting, estimate the mean, not the
    # median: ~100 s an epoch does not fit 12 in 1000 s, where the median's 70 s would.
    from pipeline.tuning.cost import too_slow

    probe = [0.06, 0.135, 0.06, 0.135, 0.06]
    assert too_slow(probe, 128, 128_000, 1000.0, 12)
    assert too_slow(probe, 128, 128_000, 1300.0, 12) is None


def test_the_cosine_schedule_shortens_to_the_epochs_that_still_fit(monkeypatch):
    import math

    import keras

    from pipeline import budget_callbacks
    from pipeline.budget_callbacks import BudgetCosine, DeadlineStop

    clock = DeadlineStop(deadline=1000.0)
    cosine = BudgetCosine(0.01, epochs=10, clock=clock, epoch_s=0.5)
    assert cosine.total(0, now=990.0) == 10  # nothing timed yet: the plan
    clock.epoch_times = [3.0]  # only the first (tracing) epoch: the plan's estimate
    assert cosine.total(1, now=990.0) == 10
    clock.epoch_times = [3.0, 2.0, 2.0]  # slower than planned: 2 s an epoch, 4 more fit
    assert cosine.total(3, now=991.0) == 7
    assert cosine.total(3, now=999.5) == 4  # none fits: this one is the last
    assert BudgetCosine(0.01, 10, DeadlineStop(None)).total(5, now=0.0) == 10

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    cosine.set_model(model)
    for epoch, now, times, total in ((0, 990.0, [], 10), (3, 991.0, [3.0, 2.0, 2.0], 7)):
        clock.epoch_times = times
        monkeypatch.setattr(budget_callbacks.time, "time", lambda now=now: now)
        cosine.on_epoch_begin(epoch)
        rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        assert rate == pytest.approx(0.005 * (1 + math.cos(math.pi * epoch / total)), rel=1e-5)
    assert cosine.totals == [10, 7]


def test_the_run_record_adds_up_search_and_training():
    tuned = {
        **TIME.model_dump(mode="json"),
        "started_at": 1000.0,
        "deadline": 1600.0,
        "ended_at": 1250.0,
        "search_seconds": 245.0,
        "planned_search_seconds": 240.0,
    }
    estimate = budgets.EpochEstimate(epoch_s=30.0, warmup_s=2.0, per_sample_s=0.01)
    plan = budgets.TrainingPlan(11, 1600.0, "tune", estimate, 340.0)
    record = budgets.run_record(TIME, tuned, plan, 1255.0, 1590.0, 11, False)
    assert record["total_seconds"] == 590.0 and record["train_seconds"] == 335.0
    assert record["search_seconds"] == 245.0 and record["planned_final_epochs"] == 11
    assert record["within_budget"] is True and record["clock"] == "tune"


@pytest.mark.slow
def test_tune_and_train_end_within_the_budget_on_a_slower_machine(tmp_path):
    """1.5 minutes for tune + train on digits; with 2 s added to every epoch (about 10x
    slower epochs on this machine) the run still ends within the budget + 5 %, and uses it.

    Epoch and trial counts are far more than fit, so on any machine the clock, not the
    work, ends both stages (with 100 final epochs a fast CI machine finished early)."""
    slow_epoch_s = 2.0
    import json
    import time

    import yaml

    from tests.conftest import run_cli
    from tests.tune_helpers import write_space

    minutes = 1.5
    params = {
        "data": {"dataset": "digits"},
        "tune": {
            "search_space": write_space(tmp_path),
            "algorithm": "random",
            "max_trials": 1000,
            "max_epochs": 3,
            "batch_size": 64,
            "early_stopping_patience": None,
        },
        "train": {"epochs": 10000, "batch_size": 64, "early_stopping_patience": None},
        "budget": {"mode": "time", "minutes": minutes, "reserve_minutes": 0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "preprocess"):
        assert run_cli(stage, cwd=tmp_path).returncode == 0
    env = {budgets.SLOW_EPOCH_ENV: str(slow_epoch_s)}
    launched = time.time()
    tune = run_cli("tune", cwd=tmp_path, env=env, timeout=600)
    assert tune.returncode == 0, tune.stderr[-2000:]
    train = run_cli("train", cwd=tmp_path, env=env, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    ended = time.time()
    record = json.loads((tmp_path / "reports" / "budget.json").read_text())
    # Before its clock starts the tune process only starts Python and reads params.yaml:
    # that start is all that is outside the budget (measured, about a second).
    start_overhead = record["started_at"] - launched
    assert 0 <= start_overhead < 5
    assert record["clock"] == "tune" and record["within_budget"] is True
    timing = (
        f"tune+train {ended - record['started_at']:.1f}s of {minutes * 60:.0f}s; record {record}; "
        f"train log: {train.stderr[-3000:]}"
    )
    assert ended - record["started_at"] <= minutes * 60 * 1.05, timing
    assert ended - launched <= minutes * 60 * 1.05 + start_overhead
    # The budget is used, not left idle: at least most of it went to the two stages.
    assert ended - launched >= minutes * 60 * 0.7
    assert record["epochs_run"] >= 1 and record["search_seconds"] > 0
