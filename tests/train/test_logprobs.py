"""Batch layout ``[pad … prompt | response … pad]`` and per-token log-probs against a manual log-softmax."""

from __future__ import annotations

import torch

from thinktuning.train.logprobs import collate, token_logprobs

PAD = 0


def test_collate_layout_hand_checked() -> None:
    b = collate([[1, 2, 3], [4]], [[5], [6, 7]], PAD)
    assert b.prompt_width == 3
    assert b.input_ids.tolist() == [[1, 2, 3, 5, 0], [0, 0, 4, 6, 7]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    # positions count real tokens only: row 1's prompt token 4 is position 0
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]
    assert b.response_ids.tolist() == [[5, 0], [6, 7]]
    assert b.response_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert b.response_mask.dtype == torch.float32


def test_collate_response_token_j_sits_at_prompt_width_plus_j() -> None:
    prompts, responses = [[9, 9, 9, 9], [8]], [[1, 2, 3], [4]]
    b = collate(prompts, responses, PAD)
    for i, r in enumerate(responses):
        for j, tok in enumerate(r):
            assert b.input_ids[i, b.prompt_width + j].item() == tok


def test_collate_all_empty_responses_keep_one_column() -> None:
    b = collate([[1, 2], [3]], [[], []], 7)
    assert b.prompt_width == 2
    assert b.input_ids.tolist() == [[1, 2, 7], [7, 3, 7]]
    assert b.response_mask.tolist() == [[0.0], [0.0]]


def manual_logprobs(model, prompts, responses, temperature=1.0) -> list[list[float]]:
    """Full logits of the padded batch, log-softmax, each response token read from the column before it."""
    b = collate(prompts, responses, PAD)
    with torch.no_grad():
        logits = model(
            input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids
        ).logits.float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    out = []
    for i, r in enumerate(responses):
        out.append([logp[i, b.prompt_width + j - 1, tok].item() for j, tok in enumerate(r)])
    return out


def test_token_logprobs_equal_manual_log_softmax(tiny_model) -> None:
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    responses = [[20, 21, 22], [30], [40, 41]]
    b = collate(prompts, responses, PAD)
    with torch.no_grad():
        got = token_logprobs(tiny_model, b)
    assert got.shape == (3, 3)
    expected = manual_logprobs(tiny_model, prompts, responses)
    for i, row in enumerate(expected):
        torch.testing.assert_close(got[i, : len(row)], torch.tensor(row), atol=1e-5, rtol=0)
        assert got[i, len(row) :].tolist() == [0.0] * (3 - len(row))


def test_token_logprobs_do_not_depend_on_padding(tiny_model) -> None:
    # the same (prompt, response) alone and in a batch with longer neighbours
    alone = collate([[10, 11]], [[30, 31]], PAD)
    batched = collate([[1, 2, 3, 4, 5, 6], [10, 11]], [[7, 8, 9, 10], [30, 31]], PAD)
    with torch.no_grad():
        a = token_logprobs(tiny_model, alone)[0]
        b = token_logprobs(tiny_model, batched)[1, :2]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_token_logprobs_temperature(tiny_model) -> None:
    prompts, responses = [[5, 6, 7], [8, 9]], [[1, 2], [3, 4]]
    b = collate(prompts, responses, PAD)
    with torch.no_grad():
        got = token_logprobs(tiny_model, b, temperature=0.5)
    expected = manual_logprobs(tiny_model, prompts, responses, temperature=0.5)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=0)
    # and T=0.5 really differs from T=1
    plain = manual_logprobs(tiny_model, prompts, responses)
    assert (got - torch.tensor(plain)).abs().max().item() > 1e-2


def test_token_logprobs_are_differentiable_and_padding_has_no_gradient(make_model) -> None:
    model = make_model(seed=1)
    b = collate([[5, 6, 7], [8]], [[1, 2], [3]], PAD)
    lp = token_logprobs(model, b)
    assert lp.requires_grad
    # row 1, column 1 is padding: its value is 0 and it pulls on no weight
    lp[1, 1].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum().item() == 0 for p in model.parameters())
    lp[0, 0].backward()
    assert model.lm_head.weight.grad.abs().sum().item() > 0
