"""Prompt masking, EOS, chat templates, truncation and the two batch layouts."""

import pytest

from rlhf_lab.data.collate import Collator, pad_collate, packed_collate
from rlhf_lab.data.sampling import RankSampler
from rlhf_lab.data.tokenize import IGNORE, Encoder
from rlhf_lab.errors import DataError

ROWS = [
    {"prompt": "What is 2 + 3?", "completion": "5", "_source": "f.jsonl", "_row": 1},
    {"prompt": "Reverse the word: apple", "completion": "elppa", "_source": "f.jsonl", "_row": 2},
]


def test_prompt_is_masked_and_completion_ends_with_eos(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=64)
    seq = enc.sft(ROWS[:1])[0]["sequences"][0]
    prompt_ids = enc.prompt_ids([ROWS[0]["prompt"]])[0]
    n = len(prompt_ids)
    assert seq["input_ids"].typecode == seq["labels"].typecode == "i"  # compact int32 storage
    assert list(seq["input_ids"][:n]) == prompt_ids
    assert list(seq["labels"][:n]) == [IGNORE] * n
    assert seq["labels"][n:] == seq["input_ids"][n:]
    assert seq["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(seq["input_ids"][n:-1]) == "5"


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_tokenizer):
    assert Encoder(tiny_tokenizer, 64).prompt_texts(["hi"]) == ["<|user|>\nhi\n<|assistant|>\n"]
    assert Encoder(tiny_tokenizer, 64, chat_template="never").prompt_texts(["hi"]) == ["hi"]


def test_messages_rows_use_all_turns_before_the_answer(tiny_tokenizer):
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    enc = Encoder(tiny_tokenizer, 64)
    seq = enc.sft([{"messages": chat}])[0]["sequences"][0]
    text = tiny_tokenizer.decode(seq["input_ids"])
    assert text == "<|user|>\na\n<|assistant|>\nb<|eos|>\n<|user|>\nc\n<|assistant|>\nd<|eos|>"
    scored = [t for t, lab in zip(seq["input_ids"], seq["labels"]) if lab != IGNORE]
    assert tiny_tokenizer.decode(scored) == "d<|eos|>"


def test_truncation_is_marked_and_prompt_only_rows_give_nothing(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=12)
    long_row = {"prompt": "hi", "completion": "word " * 40}
    huge_prompt = {"prompt": "word " * 40, "completion": "x"}
    short = {"prompt": "hi", "completion": "ok"}
    features = enc.sft([long_row, short, huge_prompt])
    cut, whole = (f["sequences"][0] for f in features)
    assert len(cut["input_ids"]) == 12 and (cut.truncated, whole.truncated) == (True, False)
    assert cut.row is long_row and whole.row is short  # how the table tells which row a feature came from


def test_overflow_error_names_the_row(tiny_tokenizer):
    enc = Encoder(tiny_tokenizer, max_length=13, on_overflow="error")  # row 1 takes exactly 13
    with pytest.raises(DataError, match=r"f.jsonl row 2: \d+ tokens exceed data.max_length=13"):
        enc.sft([{**ROWS[0], "completion": "5"}, ROWS[1]])


def test_padded_and_packed_batches_hold_the_same_tokens(tiny_tokenizer):
    features = Encoder(tiny_tokenizer, 64).sft(ROWS)
    padded = pad_collate(features, tiny_tokenizer.pad_token_id)
    packed = packed_collate(features, 0)  # one row
    lengths = [len(f["sequences"][0]["input_ids"]) for f in features]
    assert padded["input_ids"].shape == (2, max(lengths))
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert padded["num_tokens"] == packed["num_tokens"] == sum(lengths)
    assert packed["position_ids"][0, lengths[0]].item() == 0  # positions restart per sequence
    assert packed["labels"][0, lengths[0]].item() == IGNORE  # never predict across sequences
    assert padded["input_ids"][padded["attention_mask"].bool()].tolist() == packed["input_ids"][0].tolist()


def test_packing_into_rows_is_first_fit_longest_first(tiny_tokenizer):
    """Rows of at most the given width; every token once; each row padded as a block of its own."""
    seq = lambda n: {"sequences": [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))}]}
    batch = packed_collate([seq(n) for n in (6, 3, 5, 2, 4)], 8)
    # longest first: 6 -> row 0, 5 -> row 1, 4 -> row 2, 3 -> row 1 (5+3), 2 -> row 0 (6+2)
    assert batch["seq_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 3, 3], [1, 1, 1, 2, 2, 2, 2, 2], [4, 4, 4, 4, -1, -1, -1, -1]]
    assert batch["position_ids"][2].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert batch["labels"][0].tolist() == [IGNORE, 2, 3, 4, 5, 6, IGNORE, 2]
    assert batch["num_tokens"] == 20
    wide = packed_collate([seq(10), seq(3)], 8)  # a sequence longer than the width gets a row of its own
    assert wide["input_ids"].shape == (2, 10)
    # the default width is the longest sequence's: no row wider than the padded batch (24 slots, not 30)
    assert packed_collate([seq(n) for n in (6, 3, 5, 2, 4)])["seq_ids"].tolist() == [
        [0, 0, 0, 0, 0, 0], [2, 2, 2, 2, 2, -1], [3, 3, 4, 4, 4, 4], [1, 1, 1, -1, -1, -1]
    ]


def test_the_collator_packs_only_when_it_saves_rows():
    seq = lambda n: {"sequences": [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))}]}
    collate = Collator(pad_id=0, padding_free=True)
    assert collate([seq(n) for n in (6, 3, 2)])["attention_mask"] is None  # 3 + 2 share a row: packed
    assert collate([seq(n) for n in (6, 5, 4)])["attention_mask"].shape == (3, 6)  # a row each: padded


def test_whether_packing_can_save_a_row_is_known_from_the_two_shortest_lengths():
    """The check that spares packing's Python pass where it would pad anyway (issue 18: a PPO rollout
    of the world, every sequence 20-34 tokens, paid it at every pass and ran 1.2-1.4x slower)."""
    default, wide, one_row = (Collator(0, True, width) for width in (None, 12, 0))
    assert default.can_pack([6, 3, 2]) and not default.can_pack([6, 5, 4])  # 2 + 3 <= 6 < 4 + 5
    assert not default.can_pack([7, 7]) and wide.can_pack([6, 5, 4])  # a wider row holds 4 + 5
    assert one_row.can_pack([7, 7]) and not one_row.can_pack([7])  # width 0: everything in one row
    assert not Collator(0, False).can_pack([6, 3, 2])  # padded by configuration
    for lengths in ([6, 3, 2], [6, 5, 4], [7, 7], [9, 1, 8, 2]):  # where it says no, packing pads
        seqs = [{"sequences": [{"input_ids": [1] * n, "labels": [1] * n}]} for n in lengths]
        assert default.can_pack(lengths) == (len(packed_collate(seqs)["input_ids"]) < len(lengths))


def test_pairs_are_laid_out_chosen_then_rejected(tiny_tokenizer):
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]
    batch = pad_collate(Encoder(tiny_tokenizer, 64).preference(rows), tiny_tokenizer.pad_token_id)
    answers = [tiny_tokenizer.decode([t for t, lab in zip(ids, labs) if lab != IGNORE][:-1]) for ids, labs in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert answers == ["a", "c", "b", "d"] and batch["num_samples"] == 2


def test_length_grouped_order_is_a_seeded_permutation_with_similar_lengths():
    lengths = [i % 37 for i in range(400)]
    sampler = RankSampler(lengths, 8, shuffle=True, group_by_length=True, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    spreads = [max(lengths[i] for i in order[j:j + 8]) - min(lengths[i] for i in order[j:j + 8]) for j in range(0, 400, 8)]
    assert sum(spreads) / len(spreads) < 3  # random batches would spread ~30
    assert list(RankSampler(lengths, 8, shuffle=True, group_by_length=True, seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_split_each_global_batch_of_one_process(shuffle):
    """Rank r takes every W-th row of the shared order: the ranks' k-th batches form one process's k-th batch."""
    lengths = [1] * 13
    one = list(RankSampler(lengths, 4, shuffle=shuffle, group_by_length=False, seed=0))
    ranks = [list(RankSampler(lengths, 4, shuffle=shuffle, group_by_length=False, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [7, 7]  # padded by wrapping so ranks stay in step
    for k in range(3):  # full global batches of 4 = 2 per rank
        assert sorted(ranks[0][2 * k:2 * k + 2] + ranks[1][2 * k:2 * k + 2]) == sorted(one[4 * k:4 * k + 4])
    assert sorted(one) == list(range(13))
    assert (one == list(range(13))) is not shuffle  # shuffled: a permutation other than file order
    if shuffle:  # seeded: the same seed gives the same order, another seed another
        assert list(RankSampler(lengths, 4, shuffle=True, group_by_length=False, seed=1)) != one
