"""Schedules against hand-worked values, their composition, state dicts and argument checks."""
import math

import pytest

from l2fast import schedules
from l2fast.schedules import Clock


def at_steps(schedule, steps, num_groups=1):
    return [schedule.multipliers(Clock(step=t), num_groups)[0] for t in steps]


def test_hand_worked_values():
    assert at_steps(schedules.Constant(0.5), [0, 7, 10**6]) == [0.5, 0.5, 0.5]
    assert at_steps(schedules.Warmup(4), range(6)) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert at_steps(schedules.Warmup(2, start=0.5), range(3)) == [0.5, 0.75, 1.0]
    assert at_steps(schedules.Linear(4, start=1.0, end=0.2), [0, 2, 4, 9]) == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert at_steps(schedules.Cosine(4, end=0.1), [0, 2, 4, 5]) == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert at_steps(schedules.Cosine(3), [1]) == pytest.approx([0.5 * (1 + math.cos(math.pi / 3))])
    assert at_steps(schedules.Step(3, gamma=0.5), range(8)) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_alternating_switches_levels_every_n_steps():
    schedule = schedules.Alternating(2)
    assert at_steps(schedule, range(7)) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert schedule.multipliers(Clock(step=2), 3) == [0.0, 0.0, 0.0]
    high_low = schedules.Alternating(1, levels=(2.0, 0.5))
    assert at_steps(high_low, range(4)) == [2.0, 0.5, 2.0, 0.5]


def test_alternating_rotates_across_groups():
    schedule = schedules.Alternating(2, rotate=True)
    got = [schedule.multipliers(Clock(step=t), 3) for t in range(8)]
    assert got == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0]]


def test_alternating_touches_only_listed_groups_in_listed_order():
    schedule = schedules.Alternating(1, rotate=True, groups=[2, 0])
    assert [schedule.multipliers(Clock(step=t), 3) for t in range(3)] == [[0, 1, 1], [1, 1, 0], [0, 1, 1]]
    on_off = schedules.Alternating(1, groups=[1])
    assert [on_off.multipliers(Clock(step=t), 2) for t in range(2)] == [[1, 1], [1, 0]]
    with pytest.raises(ValueError, match=r"groups \[2, 0\] name groups beyond the optimizer's 2"):
        schedule.multipliers(Clock(), 2)


def test_epoch_unit_reads_the_epoch_count():
    schedule = schedules.Alternating(1, unit="epoch")
    assert schedule.multipliers(Clock(step=100, epoch=0), 1) == [1.0]
    assert schedule.multipliers(Clock(step=0, epoch=1), 1) == [0.0]
    assert schedules.Warmup(2, unit="epoch").multipliers(Clock(step=50, epoch=1), 1) == [0.5]


def test_sequential_restarts_time_at_each_milestone():
    schedule = schedules.Sequential([schedules.Warmup(2), schedules.Cosine(4), schedules.Constant(0.3)], milestones=[2, 6])
    want = [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.3, 0.3]
    assert at_steps(schedule, range(8)) == pytest.approx(want)


def test_product_multiplies_group_by_group():
    schedule = schedules.Warmup(4) * schedules.Alternating(1, rotate=True)
    assert schedule.multipliers(Clock(step=1), 2) == [0.0, 0.25]
    assert schedule.multipliers(Clock(step=2), 2) == [0.5, 0.0]
    epochs_and_steps = schedules.Product(schedules.Alternating(1, unit="epoch"), schedules.Step(1, gamma=0.5))
    assert epochs_and_steps.multipliers(Clock(step=2, epoch=0), 1) == [0.25]
    assert epochs_and_steps.multipliers(Clock(step=2, epoch=1), 1) == [0.0]


def test_lambda_and_plain_functions():
    assert at_steps(schedules.Lambda(lambda t: 0.1 * t), [0, 3]) == pytest.approx([0.0, 0.3])
    assert isinstance(schedules.as_schedule(lambda t: 1.0), schedules.Lambda)
    assert isinstance(schedules.as_schedule(None), schedules.Constant)


def test_state_dict_round_trip_restores_the_configuration():
    saved = schedules.Sequential(
        [schedules.Warmup(3, start=0.1), schedules.Alternating(5, levels=(1.0, 0.2), rotate=True, groups=[1, 0])],
        milestones=[3],
    )
    fresh = schedules.Sequential([schedules.Warmup(10), schedules.Alternating(1)], milestones=[10])
    state = saved.state_dict()
    assert state["schedules"][1] == {
        "type": "Alternating", "every": 5, "levels": (1.0, 0.2), "rotate": True, "groups": [1, 0], "unit": "step"
    }
    fresh.load_state_dict(state)
    for t in range(20):
        assert fresh.multipliers(Clock(step=t), 2) == saved.multipliers(Clock(step=t), 2)
    assert fresh.state_dict() == state


def test_load_state_dict_rejects_another_schedule():
    with pytest.raises(ValueError, match="Cosine schedule into a Warmup"):
        schedules.Warmup(3).load_state_dict(schedules.Cosine(3).state_dict())
    with pytest.raises(ValueError, match="saved Sequential.schedules has 1 schedules, this one 2"):
        two = schedules.Sequential([schedules.Warmup(1), schedules.Warmup(1)], milestones=[1])
        two.load_state_dict(schedules.Sequential([schedules.Warmup(1)], milestones=[]).state_dict())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: schedules.Warmup(0), "total must be a positive integer"),
        (lambda: schedules.Cosine(2.5), "total must be a positive integer"),
        (lambda: schedules.Linear(5, end=-0.1), "end must be a finite number >= 0"),
        (lambda: schedules.Step(2, gamma=float("nan")), "gamma must be a finite number >= 0"),
        (lambda: schedules.Alternating(2, levels=(1.0,)), "needs two levels"),
        (lambda: schedules.Alternating(2, groups=[0, 0]), "distinct indices"),
        (lambda: schedules.Alternating(2, unit="batch"), "unit must be 'step' or 'epoch'"),
        (lambda: schedules.Sequential([schedules.Warmup(2)], milestones=[2]), "one milestone fewer"),
        (lambda: schedules.Sequential([schedules.Warmup(2), schedules.Warmup(2)], milestones=[0]), "positive and increasing"),
        (lambda: schedules.Sequential([schedules.Warmup(2), schedules.Cosine(2, unit="epoch")], milestones=[2]), "counts steps but"),
        (lambda: schedules.Lambda(3.0), "needs a callable"),
    ],
)
def test_bad_arguments_get_clear_errors(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_a_growing_step_refuses_the_first_step_beyond_float_range():
    """gamma ** k for gamma > 1 leaves float range: a ValueError naming the step, not an OverflowError."""
    growing = schedules.Step(1, gamma=2.0)
    assert at_steps(growing, [0, 3, 1023]) == [1.0, 8.0, 2.0 ** 1023]
    with pytest.raises(ValueError, match=r"Step\(every=1, gamma=2.0, unit='step'\) reaches gamma \*\* 1024 at step 1024, "
                                         r"beyond the range of a float"):
        growing.multipliers(Clock(step=1024), 1)
    assert at_steps(schedules.Step(1, gamma=0.5), [10**6]) == [0.0]  # shrinking ones underflow to 0, as they should


@pytest.mark.parametrize("build, name", [(lambda: schedules.Schedule(), "Schedule"),
                                         (lambda: schedules._Decay(3), "_Decay")])
def test_abstract_schedules_cannot_be_built(build, name):
    with pytest.raises(TypeError, match=f"{name} is abstract .*use one of Alternating, Constant, Cosine, Lambda, Linear, "
                                        "Product, Sequential, Step, Warmup$"):
        build()


def test_nesting_is_refused_beyond_max_nesting():
    """Evaluating, saving and loading recurse once per level: a nest deeper than MAX_NESTING is refused
    when built, not met as a RecursionError later."""
    nest = schedules.Constant(0.5)
    for _ in range(schedules.MAX_NESTING - 1):
        nest = schedules.Product(nest)
    assert nest.depth() == schedules.MAX_NESTING and nest.multipliers(Clock(), 1) == [0.5]
    with pytest.raises(ValueError, match=f"Product would nest schedules {schedules.MAX_NESTING + 1} levels deep"):
        schedules.Product(nest)
    with pytest.raises(ValueError, match=f"Sequential would nest schedules {schedules.MAX_NESTING + 1} levels deep"):
        schedules.Sequential([schedules.Warmup(2), nest], milestones=[2])
