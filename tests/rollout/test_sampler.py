"""Student rollouts on a tiny random Llama: padding layout, greedy/sampled decoding, stopping, and the key
invariant that the log-probs recorded while sampling equal the trainer's log-probs of the same tokens."""

from __future__ import annotations

import pytest
import torch

from thinktuning.rollout.decoding import DecodeSession, decode_linears, draw, fill_holes, gemm_rows
from thinktuning.rollout.sampler import sample
from thinktuning.tensors import left_pad, positions_from_mask
from thinktuning.train.logprobs import collate, token_logprobs

PAD = 0
# different lengths, so the batch is left-padded
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def greedy_by_hand(model, prompt: list[int], n: int) -> list[int]:
    """Argmax decoding with a full forward pass over the unpadded sequence at every step (no cache)."""
    seq = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


def letters(ids) -> str:
    """Toy decode: token id -> one letter."""
    return "".join(chr(ord("a") + int(i) % 26) for i in ids)


# ---------------------------------------------------------------------------------------------- padding


def test_left_pad_hand_checked() -> None:
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == torch.long


def test_left_pad_with_an_empty_row_and_other_pad_id() -> None:
    ids, mask = left_pad([[], [5, 6]], pad_id=9)
    assert ids.tolist() == [[9, 9], [5, 6]]
    assert mask.tolist() == [[0, 0], [1, 1]]


def test_positions_start_at_zero_on_first_real_token() -> None:
    _, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


# ------------------------------------------------------------------------------------ log-prob invariant


def test_sampled_logprobs_equal_trainer_logprobs(tiny_model) -> None:
    gen = torch.Generator().manual_seed(1)
    first = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=63, pad_id=PAD, generator=gen)
    # make rows end at different lengths: use a token row 0 sampled at position 2 as eos, same random stream
    eos = first[0].response_ids[2]
    gen = torch.Generator().manual_seed(1)
    rollouts = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=eos, pad_id=PAD, generator=gen)
    lengths = [len(r.response_ids) for r in rollouts]
    assert rollouts[0].finished and lengths[0] <= 3
    assert len(set(lengths)) > 1, lengths  # precondition: right padding is exercised

    batch = collate(PROMPTS, [r.response_ids for r in rollouts], PAD)
    with torch.no_grad():
        trainer = token_logprobs(tiny_model, batch)
    for i, r in enumerate(rollouts):
        assert r.prompt_ids == PROMPTS[i]
        assert len(r.logprobs) == len(r.response_ids)
        torch.testing.assert_close(
            trainer[i, : len(r.logprobs)], torch.tensor(r.logprobs), atol=1e-4, rtol=0
        )
        assert trainer[i, len(r.logprobs) :].abs().sum().item() == 0.0
    # the wide-init model is far from uniform: log-probs are not all log(1/64) = -4.159
    assert max(abs(lp + 4.1589) for r in rollouts for lp in r.logprobs) > 0.5


def test_sampled_logprobs_with_temperature_match_trainer(tiny_model) -> None:
    gen = torch.Generator().manual_seed(5)
    rollouts = sample(
        tiny_model, PROMPTS, max_new_tokens=6, eos_id=63, pad_id=PAD, generator=gen, temperature=2.0
    )
    batch = collate(PROMPTS, [r.response_ids for r in rollouts], PAD)
    with torch.no_grad():
        hot = token_logprobs(tiny_model, batch, temperature=2.0)
        cold = token_logprobs(tiny_model, batch, temperature=1.0)
    for i, r in enumerate(rollouts):
        torch.testing.assert_close(hot[i, : len(r.logprobs)], torch.tensor(r.logprobs), atol=1e-4, rtol=0)
    # the recorded log-probs are of the temperature-scaled policy, not the T=1 one
    assert (hot - cold).abs().max().item() > 1e-2


def test_batch_size_does_not_change_greedy_results(tiny_model) -> None:
    together = sample(tiny_model, PROMPTS, max_new_tokens=6, eos_id=63, pad_id=PAD, greedy=True)
    alone = sample(tiny_model, PROMPTS, max_new_tokens=6, eos_id=63, pad_id=PAD, greedy=True, batch_size=1)
    for a, b in zip(together, alone, strict=True):
        assert a.response_ids == b.response_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- decoding


def test_greedy_equals_argmax_by_hand(tiny_model) -> None:
    rollouts = sample(tiny_model, PROMPTS, max_new_tokens=6, eos_id=63, pad_id=PAD, greedy=True)
    for prompt, r in zip(PROMPTS, rollouts, strict=True):
        expected = greedy_by_hand(tiny_model, prompt, 6)
        assert 63 not in expected  # precondition: eos never reached, so all 6 tokens are generated
        assert r.response_ids == expected
        assert r.finished is False


def test_eos_stops_a_row_without_disturbing_the_others(tiny_model) -> None:
    first = {i: greedy_by_hand(tiny_model, p, 6) for i, p in enumerate(PROMPTS)}
    eos = first[1][0]  # row 1's first greedy token
    assert eos not in first[0] and eos not in first[2]  # precondition for rows 0 and 2
    rollouts = sample(tiny_model, PROMPTS, max_new_tokens=6, eos_id=eos, pad_id=PAD, greedy=True)
    assert rollouts[1].response_ids == [eos]
    assert rollouts[1].finished is True
    assert len(rollouts[1].logprobs) == 1
    for i in (0, 2):
        assert rollouts[i].response_ids == first[i]
        assert rollouts[i].finished is False


def test_dropping_ended_rows_changes_no_greedy_result(tiny_model) -> None:
    first = [greedy_by_hand(tiny_model, p, 8) for p in PROMPTS]
    eos = first[2][3]  # row 2 ends at its 4th token; check where the others end, by hand
    ends = [r.index(eos) + 1 if eos in r else 8 for r in first]
    assert len(set(ends)) > 1, ends  # precondition: rows end at different steps, so the batch shrinks midway
    kept = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=eos, pad_id=PAD, greedy=True, compact=False)
    dropped = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=eos, pad_id=PAD, greedy=True)
    for f, end, a, b in zip(first, ends, kept, dropped, strict=True):
        assert a.response_ids == b.response_ids == f[:end]
        assert a.finished == b.finished == (eos in f)
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_length_limit_leaves_row_unfinished(tiny_model) -> None:
    gen = torch.Generator().manual_seed(0)
    eos = 63
    rollouts = sample(tiny_model, PROMPTS, max_new_tokens=5, eos_id=eos, pad_id=PAD, generator=gen)
    cut = [r for r in rollouts if eos not in r.response_ids]
    assert cut, "precondition: some row never sampled the eos token"
    for r in cut:
        assert r.finished is False
        assert len(r.response_ids) == 5
        assert len(r.logprobs) == 5


def test_all_rows_finishing_stops_the_loop_early(tiny_model) -> None:
    # the same prompt three times: every row stops on its first greedy token
    eos = greedy_by_hand(tiny_model, PROMPTS[0], 1)[0]
    rollouts = sample(tiny_model, [PROMPTS[0]] * 3, max_new_tokens=50, eos_id=eos, pad_id=PAD, greedy=True)
    assert [r.response_ids for r in rollouts] == [[eos]] * 3
    assert all(r.finished for r in rollouts)


def test_seeded_generator_is_reproducible(tiny_model) -> None:
    a = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=63, pad_id=PAD,
               generator=torch.Generator().manual_seed(42))
    b = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=63, pad_id=PAD,
               generator=torch.Generator().manual_seed(42))
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]
    c = sample(tiny_model, PROMPTS, max_new_tokens=8, eos_id=63, pad_id=PAD,
               generator=torch.Generator().manual_seed(43))
    assert [r.response_ids for r in a] != [r.response_ids for r in c]



def test_sample_restores_training_mode(make_model) -> None:
    model = make_model(seed=3)
    model.train()
    sample(model, PROMPTS[:1], max_new_tokens=2, eos_id=63, pad_id=PAD, greedy=True)
    assert model.training is True


# ---------------------------------------------------------------------------------------------- draw


def test_draw_inverts_the_cumulative_distribution_by_hand(monkeypatch) -> None:
    # cdf of [1/8, 0, 5/8, 1/4] is [0.125, 0.125, 0.75, 1.0] (exact in binary): u=0.0625 -> 0, u=0.125 -> 2
    # (token 1 has no mass), u=0.74 -> 2, u=0.75 -> 3, u=0.999 -> 3
    probs = torch.tensor([[0.125, 0.0, 0.625, 0.25]] * 5)
    us = torch.tensor([[0.0625], [0.125], [0.74], [0.75], [0.999]])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: us)
    assert draw(probs).tolist() == [0, 2, 2, 3, 3]


def test_draw_never_returns_a_token_without_mass_even_at_the_top_edge(monkeypatch) -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0]]) * 3.0  # unnormalised too
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones(2, 1))  # u * total == total
    assert draw(probs).tolist() == [1, 1]


def test_draw_matches_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0, 0.125]).repeat(20000, 1)
    got = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=5).float() / 20000
    assert got[3] == 0
    assert torch.allclose(got, probs[0], atol=0.015)


def test_draw_is_reproducible_with_a_seeded_generator() -> None:
    probs = torch.softmax(torch.randn(8, 100, generator=torch.Generator().manual_seed(1)), -1)
    a = draw(probs, torch.Generator().manual_seed(5))
    b = draw(probs, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# -------------------------------------------------------------------------------------- decode_linears


def test_decode_linears_computes_the_same_products() -> None:
    lin = torch.nn.Linear(6, 5)
    x = torch.randn(3, 2, 6)
    expected = lin(x)
    with torch.no_grad(), decode_linears(lin):
        got = lin(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.shape == (3, 2, 5)


def test_gemm_rows_rounds_up_to_a_multiple_of_8_above_8() -> None:
    assert [gemm_rows(n) for n in (1, 3, 8, 9, 15, 16, 17, 31, 32, 33)] == [1, 3, 8, 16, 16, 16, 24, 32, 32, 40]


@pytest.mark.parametrize("rows", [5, 11, 13, 16, 17])
def test_decode_linears_padded_rows_give_the_same_products(rows) -> None:
    lin = torch.nn.Linear(24, 40)
    x = torch.randn(rows, 1, 24)
    expected = lin(x)
    with torch.no_grad(), decode_linears(lin):
        got = lin(x)
    assert got.shape == (rows, 1, 40) and got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_decode_linears_is_undone_on_exit_and_leaves_autograd_alone() -> None:
    lin = torch.nn.Linear(4, 4)
    with decode_linears(lin):
        assert "forward" in vars(lin)
        y = lin(torch.randn(2, 4))  # grad enabled: the plain path, differentiable
        y.sum().backward()
    assert "forward" not in vars(lin)
    assert lin.weight.grad is not None


def test_decode_linears_keeps_model_outputs(tiny_model) -> None:
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        plain = tiny_model(input_ids=ids).logits
        with decode_linears(tiny_model):
            patched = tiny_model(input_ids=ids).logits
    assert torch.allclose(plain, patched, atol=1e-5)


# -------------------------------------------------------------------------------------- buffered_cache


def test_buffered_cache_gives_the_same_logits_as_the_dynamic_cache(tiny_model) -> None:
    from transformers import DynamicCache

    from thinktuning.rollout.decoding import CACHE_HEADROOM, buffered_cache

    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    outs = []
    for cache in (DynamicCache(), buffered_cache()):
        with torch.no_grad():
            tiny_model(input_ids=ids, past_key_values=cache, use_cache=True)
            # past the headroom, so the buffer is reallocated once on the way
            steps = [tiny_model(input_ids=torch.tensor([[t % 50 + 3], [t % 40 + 3]]), past_key_values=cache,
                                use_cache=True).logits
                     for t in range(13, 13 + CACHE_HEADROOM + 3)]
        outs.append(torch.cat(steps, dim=1))
        assert cache.get_seq_length() == 4 + CACHE_HEADROOM + 3
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_buffered_cache_survives_copy_and_batch_repeat(tiny_model) -> None:
    import copy

    from thinktuning.rollout.decoding import buffered_cache

    prefix = buffered_cache()
    with torch.no_grad():
        tiny_model(input_ids=torch.tensor([[5, 6, 7]]), past_key_values=prefix, use_cache=True)
        a = copy.deepcopy(prefix)
        a.batch_repeat_interleave(2)
        got = tiny_model(input_ids=torch.tensor([[8], [9]]), past_key_values=a, use_cache=True).logits
        want = tiny_model(input_ids=torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]])).logits[:, -1:]
    assert torch.allclose(got, want, atol=1e-5)
    assert prefix.get_seq_length() == 3  # the original is untouched


def test_buffered_cache_keeps_selected_rows_and_appends_in_place(tiny_model) -> None:
    from thinktuning.rollout.decoding import buffered_cache

    cache = buffered_cache()
    with torch.no_grad():
        tiny_model(input_ids=torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]]), past_key_values=cache,
                   use_cache=True)
        cache.batch_select_indices(torch.tensor([0, 2]))
        layer = cache.layers[0]
        buffer = layer.keys.data_ptr()
        got = tiny_model(input_ids=torch.tensor([[14], [15]]), past_key_values=cache, use_cache=True).logits
        assert layer.keys.data_ptr() == buffer, "the append after a selection was not in place"
        want = tiny_model(input_ids=torch.tensor([[5, 6, 7, 14], [11, 12, 13, 15]])).logits[:, -1:]
    assert torch.allclose(got, want, atol=1e-5)
    assert cache.get_seq_length() == 4 and layer.keys.shape[0] == 2


def test_fill_holes_moves_rows_from_the_end_into_the_gaps() -> None:
    assert fill_holes([False, True, True, False, False]) == [0, 3, 4]
    assert fill_holes([False, True, False, False, False]) == [0, 4, 2, 3]
    assert fill_holes([False, False, True]) == [0, 1]  # only the last row goes: nothing moves
    assert fill_holes([True, True, True]) == []


def test_buffered_cache_any_row_order_is_still_right(tiny_model) -> None:
    from thinktuning.rollout.decoding import buffered_cache

    cache = buffered_cache()
    with torch.no_grad():
        tiny_model(input_ids=torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]]), past_key_values=cache,
                   use_cache=True)
        cache.batch_select_indices(torch.tensor([2, 0]))  # reordered: not the in-place case
        got = tiny_model(input_ids=torch.tensor([[14], [15]]), past_key_values=cache, use_cache=True).logits
        want = tiny_model(input_ids=torch.tensor([[11, 12, 13, 14], [5, 6, 7, 15]])).logits[:, -1:]
    assert torch.allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------------------------- decode session


def test_session_greedy_equals_argmax_by_hand(tiny_model) -> None:
    session = DecodeSession(tiny_model, len(PROMPTS), PAD)
    session.feed(PROMPTS)
    out = session.generate(6, eos_id=63)
    assert out == [greedy_by_hand(tiny_model, p, 6) for p in PROMPTS]


def test_session_continues_after_more_text_and_a_row_fed_nothing_waits(tiny_model) -> None:
    session = DecodeSession(tiny_model, len(PROMPTS), PAD)
    session.feed(PROMPTS)
    first = session.generate(3, eos_id=63)
    extra = [[20, 21], [], [22]]  # row 1 gets nothing: its cache and last logits must stay as they were
    session.feed(extra)
    second = session.generate(3, eos_id=63)
    for prompt, a, more, b in zip(PROMPTS, first, extra, second, strict=True):
        assert b == greedy_by_hand(tiny_model, prompt + a + more, 3)


def test_session_decodes_only_the_rows_asked_for(tiny_model) -> None:
    session = DecodeSession(tiny_model, len(PROMPTS), PAD)
    session.feed(PROMPTS)
    out = session.generate(4, eos_id=63, rows=[1])
    assert out == [[], greedy_by_hand(tiny_model, PROMPTS[1], 4), []]
    # the skipped rows were fed padding only: they continue exactly where they were
    later = session.generate(2, eos_id=63, rows=[0, 2])
    assert later[0] == greedy_by_hand(tiny_model, PROMPTS[0], 2)
    assert later[2] == greedy_by_hand(tiny_model, PROMPTS[2], 2)


def test_session_stop_string_ends_a_row_right_after_it(tiny_model) -> None:
    full = greedy_by_hand(tiny_model, PROMPTS[0], 8)
    text = letters(full)
    # the first position k >= 1 whose letter has not appeared before: generation must stop right after it
    k = next(j for j in range(1, 8) if text[j] not in text[:j])
    session = DecodeSession(tiny_model, 1, PAD)
    session.feed(PROMPTS[:1])
    assert session.generate(8, eos_id=63, stop_strings=[text[k]], decode=letters) == [full[: k + 1]]


def test_session_from_a_shared_prefix_equals_reading_it_whole(tiny_model) -> None:
    prefix, rests = [3, 4, 5, 6], [[7, 8], [9], [10, 11, 12]]
    first = DecodeSession(tiny_model, 1, PAD)
    first.feed([prefix])
    shared = (first.cache, len(prefix))
    session = DecodeSession(tiny_model, len(rests), PAD, prefix=shared)
    session.feed(rests)
    assert session.generate(5, eos_id=63) == [greedy_by_hand(tiny_model, prefix + r, 5) for r in rests]
    # the prefix cache was copied, not extended: a second session from it gives the same result
    again = DecodeSession(tiny_model, 1, PAD, prefix=shared)
    again.feed(rests[:1])
    assert again.generate(5, eos_id=63) == [greedy_by_hand(tiny_model, prefix + rests[0], 5)]


def test_session_repetition_penalty_counts_only_generated_tokens(tiny_model) -> None:
    """With a huge penalty no generated token repeats, while a token of the prompt may still be chosen."""
    prompt = [3, 12, 13, 14]
    plain = greedy_by_hand(tiny_model, prompt, 12)
    assert plain[:2] == [14, 14], "precondition: plain greedy picks the prompt's last token, twice"
    session = DecodeSession(tiny_model, 1, PAD)
    session.feed([prompt])
    out = session.generate(12, eos_id=63, repetition_penalty=1e6)[0]
    assert out[0] == 14  # the prompt is not penalised
    assert len(set(out)) == len(out)  # what it generated is


def test_session_stop_strings_need_a_decode_function(tiny_model) -> None:
    session = DecodeSession(tiny_model, 1, PAD)
    session.feed(PROMPTS[:1])
    with pytest.raises(ValueError, match="decode function"):
        session.generate(2, eos_id=63, stop_strings=["x"])


def test_session_must_be_fed_before_generating(tiny_model) -> None:
    with pytest.raises(RuntimeError, match="feed the session"):
        DecodeSession(tiny_model, 1, PAD).generate(2, eos_id=63)
