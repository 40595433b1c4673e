import pytest

from thinktuning.train.microbatch import padded_tokens, plan_micro_batches


def test_rows_are_sorted_longest_first_and_cut_by_size() -> None:
    # response lengths 5, 90, 30, 60, 10: sorted 1(90), 3(60), 2(30), 4(10), 0(5)
    plan = plan_micro_batches([5, 90, 30, 60, 10], [1.0, -1.0, 0.5, 0.2, -0.3], 2, skip_zero_advantage=True)
    assert plan == [[1, 3], [2, 4], [0]]


def test_zero_advantage_rows_are_left_out_only_when_asked() -> None:
    adv = [0.0, 1.0, 0.0, -1.0]
    assert plan_micro_batches([4, 3, 2, 1], adv, 8, skip_zero_advantage=True) == [[1, 3]]
    assert plan_micro_batches([4, 3, 2, 1], adv, 8, skip_zero_advantage=False) == [[0, 1, 2, 3]]


def test_a_group_without_signal_gives_an_empty_plan() -> None:
    assert plan_micro_batches([7, 7, 7], [0.0, 0.0, 0.0], 2, skip_zero_advantage=True) == []


def test_ties_keep_their_order() -> None:
    assert plan_micro_batches([3, 3, 3, 3], [1.0] * 4, 3, skip_zero_advantage=True) == [[0, 1, 2], [3]]


def test_sorting_cuts_padding_by_hand() -> None:
    prompts = [10, 10, 10, 10]
    responses = [100, 10, 100, 10]
    in_order = [[0, 1], [2, 3]]  # each pair padded to 10 + 100: 4 * 110
    assert padded_tokens(prompts, responses, in_order) == 440
    sorted_plan = plan_micro_batches(responses, [1.0] * 4, 2, skip_zero_advantage=False)
    assert sorted_plan == [[0, 2], [1, 3]]
    assert padded_tokens(prompts, responses, sorted_plan) == 2 * 110 + 2 * 20


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="micro_batch_size"):
        plan_micro_batches([1], [1.0], 0, skip_zero_advantage=True)
    with pytest.raises(ValueError, match="lengths"):
        plan_micro_batches([1, 2], [1.0], 1, skip_zero_advantage=True)
