"""Public data layouts read as they are (ShareGPT, TRL's implicit-prompt preferences, plain text,
HH-RLHF), with the prompt / completion split checked token by token, and chat rows on a tokenizer
without a chat template."""

from __future__ import annotations

import pytest

from rlhf_lab.config import DataConfig, ModelConfig
from rlhf_lab.data.builtin import load_synthetic
from rlhf_lab.data.sources import load_source, validate
from rlhf_lab.data.tokenize import IGNORE, Encoder
from rlhf_lab.errors import DataError
from rlhf_lab.models import load_tokenizer
from tests.conftest import write_jsonl
from tests.inprocess import QUICK, run_in_process


def rows_of(path, fmt="sft", chat=True, **cfg):
    rows, where = load_source("data", DataConfig(path=str(path), **cfg), fmt, {"synthetic": load_synthetic}, chat=chat)
    return validate(rows, fmt, where, "error")[0]


def scored_text(tokenizer, seq) -> str:
    """The tokens the loss covers (a label that is not -100), decoded."""
    return tokenizer.decode([t for t, label in zip(seq["input_ids"], seq["labels"]) if label != IGNORE])


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- ShareGPT ---------------------------------------------------------------------------------------


def test_sharegpt_conversations_are_chat_turns_trained_on_the_last_answer(tmp_path, tiny_tokenizer):
    turns = [("system", "Be brief."), ("human", "Hi?"), ("gpt", "Hello."), ("human", "Bye?"), ("gpt", "Bye.")]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": [{"from": f, "value": v} for f, v in turns], "id": "a1"}])
    row = rows_of(path)[0]
    assert row["messages"] == [{"role": "system", "content": "Be brief."}, user("Hi?"), assistant("Hello."), user("Bye?"), assistant("Bye.")]
    assert row["id"] == "a1"  # other columns are kept
    seq = Encoder(tiny_tokenizer, 128).sft([row])[0]["sequences"][0]
    assert scored_text(tiny_tokenizer, seq) == "Bye.<|eos|>"
    prompt = tiny_tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
    assert tiny_tokenizer.decode(seq["input_ids"]) == prompt + "Bye.<|eos|>"


def test_sharegpt_role_that_is_not_one_names_file_row_and_turn(tmp_path):
    good = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    bad = {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}
    path = write_jsonl(tmp_path / "sg.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"sg.jsonl row 2: not in sharegpt layout: field 'conversations' turn 2 has from='bot'"):
        rows_of(path)


def test_a_converter_can_be_forced(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match=r"plain.jsonl row 1: not in sharegpt layout: no field 'conversations'"):
        rows_of(path, converter="sharegpt")


# --- TRL's implicit-prompt preferences ---------------------------------------------------------------


def test_implicit_prompt_of_chats_is_their_shared_turns(tmp_path, tiny_tokenizer):
    q = user("Is water wet?")
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": [q, assistant("Yes.")], "rejected": [q, assistant("No.")], "score": 1}])
    row = rows_of(path, "preference")[0]
    assert (row["prompt"], row["chosen"], row["rejected"], row["score"]) == ([q], [assistant("Yes.")], [assistant("No.")], 1)
    chosen, rejected = Encoder(tiny_tokenizer, 128).preference([row])[0]["sequences"]
    assert (scored_text(tiny_tokenizer, chosen), scored_text(tiny_tokenizer, rejected)) == ("Yes.<|eos|>", "No.<|eos|>")


def test_dialogues_that_part_before_their_last_turn_keep_every_later_turn_as_the_answer(tmp_path, tiny_tokenizer):
    """The prompt ends before the first assistant turn in which they differ; the answer is the rest
    of the dialogue, written by the chat template exactly as the whole dialogue would be."""
    chosen = [user("Hi"), assistant("Hello!"), user("How are you?"), assistant("Fine.")]
    rejected = [user("Hi"), assistant("Go away."), user("Rude."), assistant("Sorry.")]
    path = write_jsonl(tmp_path / "parted.jsonl", [{"chosen": chosen, "rejected": rejected}])
    row = rows_of(path, "preference")[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ([user("Hi")], chosen[1:], rejected[1:])
    seq_chosen, seq_rejected = Encoder(tiny_tokenizer, 128).preference([row])[0]["sequences"]
    whole = tiny_tokenizer.apply_chat_template(chosen, tokenize=False)  # ends with "<|eos|>\n"
    assert tiny_tokenizer.decode(seq_chosen["input_ids"]) + "\n" == whole
    assert scored_text(tiny_tokenizer, seq_chosen) == "Hello!<|eos|>\n<|user|>\nHow are you?\n<|assistant|>\nFine.<|eos|>"
    assert scored_text(tiny_tokenizer, seq_rejected).endswith("Sorry.<|eos|>")


@pytest.mark.parametrize(
    "chosen,rejected,split",
    [
        ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),  # TRL's own example
        ("I like cats.", "I like cars.", ("I like", " cats.", " cars.")),  # never inside a word
        ("Q: 2+2?\nA: 4", "Q: 2+2?\nA: 5", ("Q: 2+2?\nA:", " 4", " 5")),
    ],
)
def test_implicit_prompt_of_texts_is_their_shared_words(tmp_path, chosen, rejected, split):
    path = write_jsonl(tmp_path / "text_pairs.jsonl", [{"chosen": chosen, "rejected": rejected}])
    row = rows_of(path, "preference")[0]
    assert (row["prompt"], row["chosen"], row["rejected"]) == split


def test_pairs_that_share_no_beginning_name_the_row(tmp_path):
    path = write_jsonl(tmp_path / "noshare.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is grey."},
                                                    {"chosen": "Yes.", "rejected": "No."}])
    message = r"noshare.jsonl row 2: not in implicit_prompt layout: no 'prompt', and 'chosen' and 'rejected' share no leading words"
    with pytest.raises(DataError, match=message):
        rows_of(path, "preference")


# --- plain text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_text_rows_are_trained_on_every_token(tmp_path, arch_dir, family):
    tokenizer = load_tokenizer(ModelConfig(source="hf", name_or_path=str(arch_dir(family))))
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "Once upon a time there was a fox."}])
    seq = Encoder(tokenizer, 128).sft(rows_of(path))[0]["sequences"][0]
    text_ids = tokenizer("Once upon a time there was a fox.", add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if family == "llama" else []  # the llama family's tokenizer adds BOS
    assert list(seq["input_ids"]) == bos + text_ids + [tokenizer.eos_token_id]
    assert list(seq["labels"]) == list(seq["input_ids"])  # the loss covers every token that has a predecessor


def test_text_of_the_wrong_type_names_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "fine"}, {"text": 5}])
    with pytest.raises(DataError, match=r"corpus.jsonl row 2: field 'text' must be text, got int"):
        rows_of(path)


# --- HH-RLHF -------------------------------------------------------------------------------------------

SHARED = "\n\nHuman: Is water wet?\n\nAssistant:"
PARTED = {  # the dialogues part at the first assistant turn, before the last one
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Rude.\n\nAssistant: Sorry.",
}


def test_hh_rlhf_transcripts_become_chat_turns_with_a_chat_template(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": SHARED + " Yes, mostly.", "rejected": SHARED + " No."}, PARTED])
    plain, parted = rows_of(path, "preference", converter="hh_rlhf")
    assert (plain["prompt"], plain["chosen"], plain["rejected"]) == ([user("Is water wet?")], [assistant("Yes, mostly.")], [assistant("No.")])
    assert parted["prompt"] == [user("Hi")]
    assert parted["chosen"] == [assistant("Hello!"), user("How are you?"), assistant("Fine, thanks.")]
    assert parted["rejected"] == [assistant("Go away."), user("Rude."), assistant("Sorry.")]


def test_hh_rlhf_transcripts_stay_text_without_a_chat_template(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": SHARED + " Yes, mostly.", "rejected": SHARED + " No."}, PARTED])
    plain, parted = rows_of(path, "preference", chat=False, converter="hh_rlhf")
    assert (plain["prompt"], plain["chosen"], plain["rejected"]) == (SHARED, " Yes, mostly.", " No.")
    assert parted["prompt"] == "\n\nHuman: Hi\n\nAssistant:"
    assert parted["chosen"] == " Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks."
    assert parted["rejected"] == " Go away.\n\nHuman: Rude.\n\nAssistant: Sorry."


# --- chat rows and chat templates ------------------------------------------------------------------------


def test_chat_rows_on_a_tokenizer_without_a_chat_template_name_the_row_and_data_chat_template(tmp_path, arch_dir):
    tokenizer = load_tokenizer(ModelConfig(source="hf", name_or_path=str(arch_dir("gpt2"))))
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "a", "completion": "b"}, {"messages": [user("hi"), assistant("hello")]}])
    with pytest.raises(DataError, match=r"chat.jsonl row 2: chat turns .* the tokenizer has no chat template: set data.chat_template"):
        Encoder(tokenizer, 64).sft(rows_of(path, chat=False))


def test_data_chat_template_gives_a_tokenizer_its_template(tmp_path, arch_dir):
    tokenizer = load_tokenizer(ModelConfig(source="hf", name_or_path=str(arch_dir("gpt2"))))
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("hi"), assistant("hello")]}])
    seq = Encoder(tokenizer, 64, chat_template=str(template)).sft(rows_of(path))[0]["sequences"][0]
    assert tokenizer.decode(seq["input_ids"]) == "user: hi\nassistant: hello<|eos|>"
    assert tokenizer.chat_template == template.read_text()  # saved with the exported model
    with pytest.raises(DataError, match="data.chat_template=nope.jinja: not a file, nor a Jinja template"):
        Encoder(tokenizer, 64, chat_template="nope.jinja")


# --- whole runs ----------------------------------------------------------------------------------------------


def test_sharegpt_sft_and_implicit_prompt_dpo_train_end_to_end(tmp_path):
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}"}]} for i in range(16)
    ])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": [user(f"Add {i} and 1."), assistant(f"{i + 1}")], "rejected": [user(f"Add {i} and 1."), assistant(f"{i + 2}")]} for i in range(16)
    ])
    common = (*QUICK, "data=jsonl", "data.batch_size=8", "trainer.max_steps=2", "export=false")
    sft = run_in_process(tmp_path / "sft", *common, f"data.path={sharegpt}", "objective=sft")
    dpo = run_in_process(tmp_path / "dpo", *common, f"data.path={pairs}", "objective=dpo")
    assert sft["global_step"] == dpo["global_step"] == 2 and sft["data/train_rows"] == dpo["data/train_rows"] == 16
