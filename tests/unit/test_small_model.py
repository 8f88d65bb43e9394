"""The small student's recipe (``echorag.models.small_model``): its pretraining examples and a
build of a few steps, loaded as the learning loop loads a student."""

import json
import random

from echorag.answering.prompts import build_messages
from echorag.models import small_model
from echorag.models.chat_tokens import encode_chat
from echorag.models.resolution import resolve_model


def test_a_repeat_is_learned_only_where_it_comes_again(tiny_tokenizer):
    rng = random.Random(0)
    for _ in range(20):
        ids, labels = small_model._repeat(tiny_tokenizer, rng, reach=100)
        run = [label for label in labels if label != -100]
        assert ids[0] == tiny_tokenizer.bos_token_id and 8 <= len(run) <= 64
        assert ids[-len(run):] == run and ids[1 : 1 + len(run)] == run  # the same run, twice
        assert len(ids) - 1 - 2 * len(run) <= 100  # at most `reach` tokens between them
        assert not set(ids[1:]) & set(tiny_tokenizer.all_special_ids)


def test_a_batch_fills_the_token_budget_and_no_more(tiny_tokenizer):
    rng = random.Random(0)
    batch = small_model._batch(lambda: small_model._repeat(tiny_tokenizer, rng, 64))
    width = max(len(ids) for ids, _ in batch)
    assert len(batch) * width <= small_model.BATCH_TOKENS < (len(batch) + 1) * width + 200


def test_korean_examples_copy_sentences_of_their_own_paragraphs(tiny_tokenizer):
    paragraphs = ["서울은 대한민국의 수도이다. 한강이 도시를 가로질러 흐른다.", "김치는 발효 음식이다. 배추를 소금에 절여 만든다."]
    encoded = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in paragraphs]
    ids, labels = small_model._text(tiny_tokenizer, encoded, paragraphs, random.Random(1))
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    copied = text.split("\n\n")[-2]  # the last copy, before the closing blank line
    sentences = {s for p in paragraphs for s in small_model._sentences(p)}
    assert any(copied.endswith(s) for s in sentences) and labels == ids


def test_a_short_build_is_a_student_the_learning_loop_can_load(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in [
        "지리산은 우리나라 최초의 국립공원이다. 천왕봉의 높이는 1,915m이다.",
        "판소리는 소리꾼과 고수가 함께하는 전통 음악이다. 관객은 추임새로 흥을 돋운다.",
    ]) + "\n", encoding="utf-8")
    out = small_model.build_small_model(tmp_path / "small-ko", [corpus], repeat_steps=2, text_steps=2)

    card = json.loads((out / "echorag_tiny.json").read_text())
    assert card["name"] == "echorag-small-ko" and card["size"] == "small" and card["corpora"] == ["corpus.jsonl"]
    assert card["repeat_steps"] == 2 and card["copying_formed_at"] is None  # two steps copy nothing yet
    resolved = resolve_model(str(out))
    assert (resolved.kind, resolved.name) == ("tiny", "echorag-small-ko")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and len(tokenizer) == model.config.vocab_size
    # The chat template marks the reply, as the learning loop's training needs.
    chat = build_messages("지리산은 어떤 산인가?", [{"text": "지리산은 국립공원이다."}], [])
    example = encode_chat(tokenizer, [*chat, {"role": "assistant", "content": "지리산은 국립공원이다. [1]"}], 4096)
    reply = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tokenizer.decode(reply).startswith("지리산은 국립공원이다. [1]")
