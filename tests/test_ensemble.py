"""The final training's ensemble: how many members, which are kept, one model of them."""

import keras
import numpy as np
import pytest

from pipeline.model_input import pixel_inputs, takes_pixels
from pipeline.training import ensemble


@pytest.mark.parametrize(
    ("size", "min_epochs", "epochs", "count"),
    [(3, 12, 80, 3), (3, 12, 30, 2), (3, 12, 11, 1), (1, 12, 100, 1), (5, 1, 3, 3)],
)
def test_members_are_as_many_as_the_epochs_pay_for(size, min_epochs, epochs, count):
    assert ensemble.member_count(size, min_epochs, epochs) == count


def one_hot(rows):
    return np.eye(3)[rows].astype(np.float32)


def test_members_are_kept_only_when_they_raise_validation_accuracy():
    labels = np.array([0, 1, 2, 0])
    best = one_hot([0, 1, 2, 1]) * 0.6  # 3/4
    helps = one_hot([0, 1, 0, 0])  # 3/4 alone, wrong but unsure on the third image
    helps[2] = [0.35, 0.0, 0.3]  # so with the best, 4/4
    useless = one_hot([1, 1, 1, 1]) * 0.1  # 1/4; cannot change an answer
    kept, score = ensemble.choose([useless, best, helps], labels)
    assert kept == [1, 2] and score == 1.0
    kept, score = ensemble.choose([useless, best], labels)
    assert kept == [1] and score == 0.75


def tiny(seed: int):
    keras.utils.set_random_seed(seed)
    inputs, x = pixel_inputs((4, 4, 1))
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="tiny")


def test_the_ensemble_is_one_model_averaging_its_members(tmp_path):
    members = [tiny(1), tiny(2)]
    model = ensemble.combine(members)
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 1)).astype(np.float32)
    expected = (members[0].predict(x, verbose=0) + members[1].predict(x, verbose=0)) / 2
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert takes_pixels(model) and ensemble.members_of(model) == 2
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert ensemble.combine([members[0]]) is members[0]


def test_each_member_gets_an_equal_share_and_a_late_one_none_without_time(monkeypatch):
    from pipeline import budget as budgets
    from pipeline.training import schedule

    estimate = budgets.EpochEstimate(epoch_s=1.0, warmup_s=0.5, per_sample_s=0.0)
    now = NOW  # _time_budget's frozen clock

    def plan(seconds_left):
        return _time_budget(monkeypatch, seconds_left, estimate, epochs=30)[0]

    finishing = 2 * schedule.FINISH_PER_MEMBER_S  # three members: two more to combine and save
    epochs, deadline = schedule.member_share(plan(finishing + 90), 1, 3, val_images=0)
    assert (epochs, deadline) == (10, now + 30)  # a third of 90 s, 0.5 s warm-up: 29 fit, 10 cap
    epochs, deadline = schedule.member_share(plan(finishing + 60), 2, 3, val_images=0)
    assert (epochs, deadline) == (10, now + 30)  # what is left, split between the last two
    assert schedule.member_share(plan(finishing + 1.2), 3, 3, val_images=0) == (0, None)
    first = schedule.member_share(plan(finishing + 1.2), 1, 3, val_images=0)
    assert first[0] == 1  # the first runs
    epochs_mode = budgets.TrainingPlan(30)
    assert schedule.member_share(epochs_mode, 2, 3, val_images=0) == (10, None)
    assert schedule.member_share(epochs_mode, 1, 1, val_images=0) == (30, None)


NOW = 1000.0


def _time_budget(monkeypatch, seconds_left: float, estimate, epochs: int = 90):
    """A time-mode TrainingPlan with ``seconds_left`` for epochs, at a frozen clock."""
    from pipeline import budget as budgets
    from pipeline.training import schedule

    now = NOW
    monkeypatch.setattr(schedule.time, "time", lambda: now)
    deadline = now + budgets.FINISH_S + seconds_left
    return budgets.TrainingPlan(epochs, deadline, "tune", estimate, seconds_left), now


def test_a_slower_member_gets_more_time_so_that_every_member_gets_the_same_epochs(monkeypatch):
    from pipeline import budget as budgets
    from pipeline.training import schedule

    fast = budgets.EpochEstimate(epoch_s=1.0, warmup_s=0.5, per_sample_s=0.0)
    slow = budgets.EpochEstimate(epoch_s=3.0, warmup_s=0.5, per_sample_s=0.0)
    finishing = schedule.FINISH_PER_MEMBER_S  # two members: one more to combine and save
    budget, now = _time_budget(monkeypatch, finishing + 81.0, fast)
    # 81 s, 1 s of warm-ups: 20 epochs each, at 1 s and 3 s.
    epochs, deadline = schedule.member_share(budget, 1, 2, val_images=0, later=[slow])
    assert (epochs, deadline) == (20, now + 20.5)
    budget, now = _time_budget(monkeypatch, finishing + 60.5, fast)  # what member 1 left
    assert schedule.member_share(budget, 2, 2, val_images=0, estimate=slow, later=[]) == (
        20,
        now + 60.5,
    )


def test_a_faster_runner_up_beside_a_slow_best_is_not_held_to_the_best_alone_plan(monkeypatch):
    # The best configuration alone would plan 27 epochs at 3 s in these 81 s: the members'
    # time split, not 27 // 2, sets their epochs (up to train.epochs // 2).
    from dataclasses import replace

    from pipeline import budget as budgets
    from pipeline.training import schedule

    slow = budgets.EpochEstimate(epoch_s=3.0, warmup_s=0.5, per_sample_s=0.0)
    fast = budgets.EpochEstimate(epoch_s=1.0, warmup_s=0.5, per_sample_s=0.0)
    budget, now = _time_budget(monkeypatch, schedule.FINISH_PER_MEMBER_S + 81.0, slow, epochs=27)
    budget = replace(budget, most_epochs=100)
    assert schedule.member_share(budget, 1, 2, val_images=0, later=[fast]) == (20, now + 60.5)
    assert (
        schedule.member_share(replace(budget, most_epochs=30), 1, 2, val_images=0, later=[fast])[0]
        == 15
    )  # each member still gets at most its share of train.epochs


def _plan_with_runner_up(epoch_seconds: float):
    from pipeline.training.plan import Plan

    runner = {"trial_id": "runner", "family": "vgg", "below_best": 0.0, "hyperparameters": {}}
    runner |= {"epoch_seconds": epoch_seconds, "train_samples": 100, "val_accuracy": 0.9}
    best = {"trial_id": "best", "family": "simple_cnn", "runners_up": [runner]}
    plan = Plan(source="tune", family="simple_cnn", hyperparameters={}, best=best)
    return plan, plan.runners_up(0.02)


@pytest.mark.parametrize(
    ("runner_epoch_s", "min_epochs", "kept"), [(3.0, 4, True), (8.0, 4, False), (3.0, 20, False)]
)
def test_a_runner_up_that_equal_epochs_leave_short_is_swapped_for_a_seed_before_training(
    monkeypatch, runner_epoch_s, min_epochs, kept
):
    from pipeline import budget as budgets
    from pipeline.config import Params
    from pipeline.training import schedule

    fast = budgets.EpochEstimate(epoch_s=1.0, warmup_s=0.0, per_sample_s=0.0)
    # 3 members, 90 s: at 1+1+3 s an epoch, 18 epochs each; at 1+1+8 s, 9, fewer than
    # budget.min_final_epochs (10 here); 18 is fewer than train.ensemble_min_epochs 20.
    # Either way two seeds, decided before the first trains.
    budget, _ = _time_budget(monkeypatch, 2 * schedule.FINISH_PER_MEMBER_S + 90.0, fast)
    settings = {"budget": {"min_final_epochs": 10}, "train": {"ensemble_min_epochs": min_epochs}}
    params = Params.model_validate(settings)
    plan, runners_up = _plan_with_runner_up(runner_epoch_s)
    roster = schedule.roster(plan, runners_up, 3, budget, params, 100, 0)
    assert [p is plan for p, _ in roster] == [True, True, not kept]
    assert roster[2][1] == (
        budgets.EpochEstimate(runner_epoch_s, 0.0, runner_epoch_s / 100) if kept else fast
    )


def test_a_runner_up_of_another_family_goes_before_a_closer_one_of_the_best_s_family():
    from pipeline.training.plan import Plan

    def runner(trial_id, family, below):
        return {"trial_id": trial_id, "family": family, "below_best": below, "hyperparameters": {}}

    runners = [
        runner("cnn32", "simple_cnn", 0.001),
        runner("vgg", "vgg", 0.008),
        runner("far", "resnet", 0.05),  # beyond the margin: never a member
        runner("resnet", "resnet", 0.012),
    ]
    best = {"trial_id": "best", "family": "simple_cnn", "runners_up": runners}
    plan = Plan(source="tune", family="simple_cnn", hyperparameters={}, best=best)
    # Another architecture makes other mistakes: the VGG, then the ResNet, then the CNN.
    assert [p.trial_id for p in plan.runners_up(0.02)] == ["vgg", "resnet", "cnn32"]
    assert [p.family for p in plan.runners_up(0.02)] == ["vgg", "resnet", "simple_cnn"]
