"""EchoRAG's tiny offline Korean model, built locally in seconds without network.

When KANANA is neither cached nor reachable, the service still runs end to end on a
tiny Llama built here: a Korean byte-level BPE tokenizer, a KANANA-like chat template
and a short deterministic warm-up. Its answers are Korean-looking but meaningless, so
every surface labels it a demo. ``echorag.models.resolution`` decides when to use (and build) it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from echorag.documents import sample_path

logger = logging.getLogger(__name__)

# The model the tiny one stands in for: its chat format is imitated, its card points to it.
KANANA_ID = "kakaocorp/kanana-1.5-2.1b-instruct-2505"
TINY_NAME = "echorag-tiny-ko-demo"
TINY_VERSION = 2  # bump when the recipe changes: cached builds are then rebuilt
TINY_MARKER = "echorag_tiny.json"

_SAMPLE_KB = sample_path("sample_kb.jsonl")


def tiny_model_dir(models_dir: Path) -> Path:
    return Path(models_dir) / "tiny-ko"


# Llama-3 style, as KANANA 1.5 uses. `{% generation %}` marks the assistant reply
# (and its end-of-turn token) for `return_assistant_tokens_mask=True`.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, "<|start_header_id|>", "<|end_header_id|>", EOT]

# Model and warm-up recipe: small enough to build in seconds on 2 CPU cores.
TINY_VOCAB = 3000
TINY_CONFIG = dict(
    hidden_size=96,
    intermediate_size=288,
    num_hidden_layers=2,
    num_attention_heads=3,  # head_dim 32: the smallest vLLM's CPU attention kernels take
    num_key_value_heads=3,
    max_position_embeddings=4096,  # RoPE: free; fits a full 3000-character RAG prompt
    tie_word_embeddings=True,
)
WARMUP_STEPS = 160
WARMUP_BATCH = 8
WARMUP_LR = 1e-2
CHAT_CONTEXT_CHARS = 160  # short passages keep warm-up sequences cheap
NO_CONTEXT_SHARE = 0.05
QUESTIONS = ["{}에 대해 알려 주세요.", "{}에 대해 설명해 주세요.", "{}의 특징은 무엇인가요?"]


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build EchoRAG's tiny offline Korean model into ``out_dir`` (replaced atomically)."""
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    docs = _corpus()
    chats = _chats(docs, seed)
    # Train BPE on the prompt format too, so the system prompt and labels tokenize compactly.
    tokenizer = train_tokenizer(
        [f"{d['title']}\n{d['text']}" for d in docs] + [m["content"] for chat in chats for m in chat]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster here, and reproducible
    try:
        model = tiny_llama(tokenizer, seed)
        loss = _warm_up(model, tokenizer, chats, seed)
    finally:
        torch.set_num_threads(threads)

    params = sum(p.numel() for p in model.parameters())
    card = dict(version=TINY_VERSION, name=TINY_NAME, seed=seed, params=params,
                vocab_size=len(tokenizer), warmup_steps=WARMUP_STEPS, warmup_loss=round(loss, 3),
                corpus_chars=sum(len(d["text"]) for d in docs))
    save_model_dir(model, tokenizer, card, _model_card(card), out_dir)
    logger.info("Built the tiny demo model (%d params, vocab %d) in %.1f s: %s",
                params, len(tokenizer), time.perf_counter() - started, out_dir)
    return out_dir


def save_model_dir(model, tokenizer, card: dict, readme: str, out_dir: Path) -> None:
    """Write model, tokenizer, marker and model card to ``out_dir``, replaced atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is for every user
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TINY_MARKER).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(readme)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)  # readers see no directory or a complete one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    # Plain text starts with <|begin_of_text|>, like Llama 3; chat templates add it themselves.
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bpe.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOT,  # end of an assistant turn, as in Llama-3-style instruct models
        pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def tiny_llama(tokenizer, seed: int, config: dict | None = None):
    """A randomly initialised Llama of ``config`` (default ``TINY_CONFIG``) for this tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    bos, eot, pad = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOT, PAD))
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, **(config or TINY_CONFIG)
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, do_sample=False
    )
    return model


def _warm_up(model, tokenizer, chats: list[list[dict]], seed: int) -> float:
    """Seeded AdamW steps on RAG-shaped chats, loss on the replies only (as the learning loop
    trains), so the model answers in Korean-looking sentences and ends its turn.

    Short one-sentence replies are learnable by a 2-layer model in a few seconds; packed
    plain-text blocks of the same text left it underfit and looping within that budget.
    """
    import torch

    examples = _chat_examples(tokenizer, chats)
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARMUP_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * (1 - step / WARMUP_STEPS)
    )
    model.train()
    batches = _shuffled_batches(len(examples), WARMUP_BATCH, random.Random(seed))
    for _ in range(WARMUP_STEPS):
        input_ids, labels, attention = _collate([examples[i] for i in next(batches)], tokenizer.pad_token_id)
        # Replies end every left-padded row, so only the last `keep` positions need logits;
        # the LM head over the whole prompt would cost most of the step for nothing.
        keep = input_ids.shape[1] - int((labels != -100).any(0).nonzero()[0]) + 1
        loss = model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=keep,
            labels=labels[:, -keep:],
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def _shuffled_batches(n: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    while True:  # epoch after epoch, each in a new seeded order
        order = rng.sample(range(n), n)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def _collate(batch: list[dict[str, list[int]]], pad_id: int):
    """Left-padded tensors, as ``generate`` sees prompts."""
    # Not training.collate: it pads on the right, which changes the weights and breaks logits_to_keep.
    import torch

    width = max(len(e["input_ids"]) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids, lab = e["input_ids"], e["labels"]
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        labels[row, width - len(lab) :] = torch.tensor(lab)
        attention[row, width - len(ids) :] = 1
    return input_ids, labels, attention


def _chats(docs: list[dict], seed: int) -> list[list[dict]]:
    """Chats shaped like the service's prompts: a question about a document, the document as
    passage [1], and one of its sentences as the cited answer; without a passage, the
    "not in the documents" answer the system prompt asks for."""
    from echorag.answering.prompts import NO_ANSWER, build_messages

    rng = random.Random(seed)
    chats = []
    for doc in docs:
        passage = {"text": doc["text"], "metadata": {"title": doc["title"]}}
        sentences = _sentences(doc["text"])
        for template in QUESTIONS:
            question = template.format(doc["title"])
            if rng.random() < NO_CONTEXT_SHARE:
                messages, answer = build_messages(question, [], []), NO_ANSWER
            else:
                messages = build_messages(question, [passage], [], max_context_chars=CHAT_CONTEXT_CHARS)
                answer = f"{sentences[0]} [1]"
            chats.append([*messages, {"role": "assistant", "content": answer}])
    return chats


def _chat_examples(tokenizer, chats: list[list[dict]]) -> list[dict[str, list[int]]]:
    """Loss on the assistant reply only, encoded exactly as the learning loop trains."""
    from echorag.models.chat_tokens import encode_chat

    # Never cuts: warm-up chats are far shorter than the model's context.
    return [encode_chat(tokenizer, chat, TINY_CONFIG["max_position_embeddings"]) for chat in chats]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _corpus() -> list[dict]:
    """The project's own Korean text: the built-in paragraphs below, so the build always
    works, plus the sample knowledge base when it is there."""
    docs = [{"title": title, "text": text} for title, text in FALLBACK_CORPUS]
    try:
        lines = _SAMPLE_KB.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
            text = record["text"].strip()
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a colleague's half-written line must not break the build
        title = (record.get("metadata") or {}).get("title") or text.split(".")[0][:20]
        if len(text) >= 40:
            docs.append({"title": str(title), "text": text})
    return docs


def _model_card(card: dict) -> str:
    c = TINY_CONFIG
    return f"""---
language: ko
library_name: transformers
tags: [echorag, demo, tiny, llama]
---
# {TINY_NAME}: EchoRAG's tiny demo model

This is **not** a real language model. EchoRAG builds it locally, in seconds and
without network, so that the whole service (retrieval, chat, streaming, LoRA
adapters, the learning loop) runs offline and in tests when Kakao's KANANA
(`{KANANA_ID}`) is not available. Its answers look Korean but mean nothing.

- Architecture: `LlamaForCausalLM`, {c['num_hidden_layers']} layers, hidden size {c['hidden_size']},
  {c['num_attention_heads']} heads, tied embeddings, {card['params']:,} parameters.
- Tokenizer: byte-level BPE trained on EchoRAG's Korean text ({card['corpus_chars']:,} characters),
  {card['vocab_size']:,} tokens, with a KANANA-like (Llama 3 style) chat template that marks
  assistant tokens with `{{% generation %}}`; generation ends at `<|eot_id|>`.
- Warm-up: {card['warmup_steps']} seeded AdamW steps on question/answer chats built from the same
  text, loss on the replies only (final loss {card['warmup_loss']}).
- Seed {card['seed']}, recipe version {card['version']}: the same inputs rebuild the same bytes.

Rebuild with `echorag build-tiny-model`.
"""


# Built-in Korean text: the tokenizer and the warm-up never depend on files that may be
# missing. Short encyclopedic paragraphs on everyday topics and on EchoRAG itself.
FALLBACK_CORPUS: list[tuple[str, str]] = [
    ("한글", "한글은 조선의 세종대왕이 1443년에 만들고 1446년에 훈민정음이라는 이름으로 반포한 문자입니다. "
     "자음과 모음을 조합해 음절을 만들며, 배우기 쉽고 과학적인 문자로 알려져 있습니다. "
     "기본 자음은 말소리를 낼 때 발음 기관의 모양을 본떠 만들었습니다. "
     "모음은 하늘, 땅, 사람을 뜻하는 세 가지 기본 글자를 조합해 만들었습니다. "
     "매년 10월 9일은 한글날로, 한글의 창제를 기념하는 국경일입니다."),
    ("서울", "서울은 대한민국의 수도이며 한강을 중심으로 발달한 대도시입니다. "
     "약 천만 명에 가까운 인구가 살고 있으며 경복궁, 남산서울타워, 북촌 한옥마을 같은 명소가 있습니다. "
     "조선 시대부터 600년 넘게 나라의 중심 도시였습니다. "
     "지하철과 버스가 잘 연결되어 있어 대중교통으로 이동하기 편리합니다. "
     "명동과 인사동에서는 쇼핑과 전통 문화를 함께 즐길 수 있습니다."),
    ("부산", "부산은 대한민국 제2의 도시이자 가장 큰 항구 도시입니다. "
     "해운대와 광안리 해수욕장이 유명하고, 매년 가을에는 부산국제영화제가 열립니다. "
     "자갈치시장에서는 신선한 해산물을 맛볼 수 있습니다. "
     "서울에서 고속열차를 타면 두 시간 반 정도 걸립니다. "
     "돼지국밥과 밀면은 부산을 대표하는 음식으로 알려져 있습니다."),
    ("제주도", "제주도는 대한민국에서 가장 큰 섬으로 화산 활동으로 만들어졌습니다. "
     "한라산, 성산일출봉, 만장굴 등 아름다운 자연 경관이 유네스코 세계자연유산으로 등재되어 있습니다. "
     "한라산은 높이가 약 1950미터로 남한에서 가장 높은 산입니다. "
     "제주 올레길을 걸으며 바다와 오름을 감상하는 여행객이 많습니다. "
     "감귤과 흑돼지가 특산물로 알려져 있습니다."),
    ("김치", "김치는 배추나 무 같은 채소를 소금에 절인 뒤 고춧가루, 마늘, 젓갈 등으로 양념해 발효시킨 한국의 전통 음식입니다. "
     "늦가을에 겨울 동안 먹을 김치를 한꺼번에 담그는 일을 김장이라고 합니다. "
     "김장 문화는 유네스코 인류무형문화유산으로 등재되었습니다. "
     "배추김치, 깍두기, 총각김치, 물김치처럼 재료와 만드는 방법에 따라 종류가 다양합니다. "
     "잘 익은 김치는 김치찌개나 김치볶음밥을 만들 때도 쓰입니다."),
    ("설날", "설날은 음력 1월 1일로 한국의 가장 큰 명절 가운데 하나입니다. "
     "가족이 모여 차례를 지내고 어른께 세배를 드리며 떡국을 먹습니다. "
     "떡국을 먹으면 나이를 한 살 더 먹는다는 말이 있습니다. "
     "어른들은 세배를 받고 덕담과 함께 세뱃돈을 줍니다. "
     "윷놀이나 연날리기 같은 전통 놀이를 즐기기도 합니다."),
    ("추석", "추석은 음력 8월 15일로 한가위라고도 부릅니다. "
     "한 해의 수확에 감사하며 송편을 빚고 조상의 묘를 찾아 성묘를 합니다. "
     "보름달을 보며 소원을 비는 풍습도 있습니다. "
     "추석 연휴에는 고향을 찾는 사람이 많아 고속도로가 붐빕니다. "
     "강강술래는 추석 밤에 여럿이 손을 잡고 원을 그리며 추던 춤입니다."),
    ("한강", "한강은 서울을 가로질러 서해로 흐르는 강입니다. "
     "강변에는 공원과 자전거 도로가 조성되어 있어 시민들이 산책과 운동을 즐깁니다. "
     "여름 밤에는 한강공원에서 야경을 보며 쉬는 사람이 많습니다. "
     "서울 구간에는 서른 개가 넘는 다리가 놓여 있습니다. "
     "봄에는 여의도 윤중로를 따라 벚꽃 축제가 열립니다."),
    ("지하철 이용 방법", "지하철을 타려면 교통카드를 개찰구에 대고 들어가면 됩니다. "
     "환승할 때에도 카드를 다시 찍어야 환승 할인을 받을 수 있습니다. "
     "내릴 역이 가까워지면 안내 방송이 나오므로 잘 들어 두는 것이 좋습니다. "
     "출퇴근 시간에는 사람이 많으니 가방을 앞으로 메는 것이 예의입니다. "
     "노약자석과 임산부 배려석은 필요한 사람을 위해 비워 두는 것이 좋습니다."),
    ("도서관", "공공도서관에서는 회원증을 만들면 누구나 책을 빌릴 수 있습니다. "
     "보통 한 번에 다섯 권 안팎을 두 주 동안 빌릴 수 있고, 기한 안에 한 번 연장할 수 있습니다. "
     "전자책과 열람실 좌석 예약 서비스를 제공하는 도서관도 많습니다. "
     "반납 기한을 넘기면 연체 기간만큼 대출이 정지될 수 있습니다. "
     "도서관에서는 조용히 하고 휴대전화는 진동으로 바꾸는 것이 좋습니다."),
    ("커피", "커피는 커피나무 열매의 씨앗을 볶아서 만든 음료입니다. "
     "한국은 일인당 커피 소비량이 많은 나라로 거리마다 카페를 쉽게 볼 수 있습니다. "
     "아메리카노는 에스프레소에 물을 더해 만든 커피입니다. "
     "카페라테는 에스프레소에 따뜻한 우유를 넣어 부드러운 맛을 냅니다. "
     "커피에 든 카페인은 잠을 깨우지만 너무 많이 마시면 잠들기 어려울 수 있습니다."),
    ("건강한 생활 습관", "건강을 지키려면 규칙적인 운동과 충분한 수면, 균형 잡힌 식사가 중요합니다. "
     "하루 삼십 분 정도 걷기만 해도 심장 건강에 도움이 됩니다. "
     "물을 자주 마시고 오래 앉아 있을 때는 가끔 일어나 몸을 움직이는 것이 좋습니다. "
     "어른은 보통 하루 일곱 시간 이상 자는 것이 좋다고 알려져 있습니다. "
     "채소와 과일을 충분히 먹고 짠 음식은 줄이는 것이 좋습니다."),
    ("사계절", "한국은 봄, 여름, 가을, 겨울의 사계절이 뚜렷합니다. "
     "봄에는 벚꽃과 진달래가 피고, 여름에는 장마와 더위가 찾아옵니다. "
     "가을에는 단풍이 아름답고 겨울에는 춥고 건조하며 눈이 내리기도 합니다. "
     "봄에는 황사와 미세먼지가 심한 날이 있어 마스크를 쓰는 사람이 많습니다. "
     "장마는 보통 6월 말부터 7월 말까지 이어집니다."),
    ("인공지능", "인공지능은 사람의 학습, 추론, 인식 같은 능력을 컴퓨터로 구현하는 기술입니다. "
     "최근에는 많은 글을 학습한 대규모 언어 모델이 질문에 답하고 글을 요약하며 번역도 합니다. "
     "다만 언어 모델은 사실이 아닌 내용을 그럴듯하게 만들어 낼 수 있어 확인이 필요합니다. "
     "이런 현상을 환각이라고 부르며, 근거 문서를 함께 주면 줄일 수 있습니다. "
     "인공지능을 쓸 때는 개인정보와 저작권도 함께 고려해야 합니다."),
    ("검색 증강 생성", "검색 증강 생성(RAG)은 질문과 관련된 문서를 먼저 검색한 뒤, 그 문서를 근거로 언어 모델이 답을 만드는 방법입니다. "
     "모델이 학습하지 않은 최신 정보나 내부 문서도 활용할 수 있습니다. "
     "답변에 근거 문서의 번호를 함께 밝히면 사용자가 내용을 확인하기 쉽습니다. "
     "문서는 적당한 길이의 조각으로 나누어 저장해야 검색이 잘 됩니다. "
     "벡터 검색과 키워드 검색을 함께 쓰면 검색 품질이 좋아집니다."),
    ("임베딩", "임베딩은 문장이나 단어의 의미를 숫자 벡터로 표현한 것입니다. "
     "의미가 비슷한 문장은 벡터 공간에서 서로 가까이 위치합니다. "
     "검색 시스템은 질문의 임베딩과 가장 가까운 문서를 찾아 보여 줍니다. "
     "두 벡터가 얼마나 비슷한지는 보통 코사인 유사도로 계산합니다. "
     "임베딩 모델을 바꾸면 저장된 문서도 모두 다시 임베딩해야 합니다."),
    ("형태소 분석", "한국어는 조사와 어미가 붙는 교착어라서 띄어쓰기 단위만으로는 검색이 어렵습니다. "
     "형태소 분석기는 문장을 의미를 가진 가장 작은 단위인 형태소로 나눕니다. "
     "키위는 빠르고 정확한 한국어 형태소 분석기입니다. "
     "예를 들어 학교에서라는 어절은 학교와 에서로 나뉩니다. "
     "형태소 단위로 색인하면 키워드 검색의 정확도가 높아집니다."),
    ("LoRA 미세 조정", "LoRA는 큰 언어 모델의 가중치는 그대로 두고 작은 저랭크 행렬만 학습하는 미세 조정 방법입니다. "
     "학습할 파라미터가 적어서 적은 메모리로도 빠르게 학습할 수 있습니다. "
     "학습된 어댑터는 용량이 작아 여러 버전을 저장하고 바꿔 끼우기 쉽습니다. "
     "하나의 기본 모델에 여러 어댑터를 올려 두고 요청마다 다른 어댑터를 쓸 수도 있습니다. "
     "학습할 때는 사용자 질문이 아니라 어시스턴트 답변에만 손실을 계산합니다."),
    ("카나나", "카나나는 카카오가 개발한 한국어와 영어를 잘하는 언어 모델 시리즈입니다. "
     "카나나 1.5 2.1B 인스트럭트 모델은 크기가 작아 하나의 GPU에서도 빠르게 실행됩니다. "
     "에코RAG는 카나나를 기본 생성 모델로 사용합니다. "
     "카나나는 대화 형식의 지시를 따르도록 학습된 인스트럭트 모델을 제공합니다. "
     "모델은 허깅페이스 허브에서 내려받을 수 있습니다."),
    ("레이 서브", "레이 서브는 파이썬으로 모델 서빙 애플리케이션을 만드는 라이브러리입니다. "
     "여러 배포를 하나의 그래프로 연결하고, 요청량에 따라 복제본 수를 자동으로 조절합니다. "
     "요청을 모아 한 번에 처리하는 배치 기능과 여러 모델을 나눠 싣는 멀티플렉싱 기능도 제공합니다. "
     "복제본마다 필요한 CPU와 GPU 자원을 지정할 수 있습니다. "
     "설정 파일 하나로 노트북과 GPU 클러스터에서 같은 애플리케이션을 실행할 수 있습니다."),
    ("에코RAG", "에코RAG는 자신의 대화에서 배우는 한국어 검색 증강 채팅 서비스입니다. "
     "대화가 충분히 모이면 LoRA로 생성 모델을 다시 학습하고, 평가를 통과한 어댑터로 서비스를 바꿉니다. "
     "새 어댑터가 더 나쁘면 이전 버전으로 되돌릴 수 있습니다. "
     "모든 대화는 저장하기 전에 개인정보를 가리고 중복을 걸러 냅니다. "
     "관리자는 웹 화면에서 학습 진행 상황과 어댑터 버전을 확인할 수 있습니다."),
    ("개인정보 보호", "주민등록번호, 전화번호, 이메일 주소, 카드 번호는 대표적인 개인정보입니다. "
     "대화 기록을 저장하기 전에 이런 정보를 가려야 개인정보가 학습 데이터에 남지 않습니다. "
     "개인정보는 꼭 필요한 만큼만 모으고 안전하게 보관해야 합니다. "
     "비밀번호는 다른 사이트와 같은 것을 쓰지 말고 주기적으로 바꾸는 것이 좋습니다. "
     "모르는 번호로 온 문자 속 링크는 누르지 않는 것이 안전합니다."),
    ("재활용 분리배출", "재활용품은 종이, 플라스틱, 유리병, 캔으로 나누어 배출합니다. "
     "용기는 내용물을 비우고 물로 헹군 뒤 라벨을 떼어 내면 재활용이 잘 됩니다. "
     "음식물 쓰레기는 물기를 빼서 전용 봉투나 수거함에 버립니다. "
     "일반 쓰레기는 지역에서 정한 종량제 봉투에 담아 버려야 합니다. "
     "배출 요일과 시간은 사는 지역마다 다르므로 미리 확인하는 것이 좋습니다."),
    ("택배", "택배를 보낼 때는 받는 사람의 주소와 연락처를 정확하게 적어야 합니다. "
     "깨지기 쉬운 물건은 완충재로 감싸고 상자에 취급 주의 표시를 합니다. "
     "운송장 번호로 배송 위치를 조회할 수 있습니다. "
     "편의점이나 우체국에서도 택배를 보낼 수 있습니다. "
     "받은 물건이 파손되었다면 사진을 찍어 두고 바로 택배사에 알리는 것이 좋습니다."),
    ("비빔밥", "비빔밥은 밥 위에 나물, 고기, 달걀 등을 올리고 고추장을 넣어 비벼 먹는 음식입니다. "
     "전주비빔밥이 특히 유명하며, 뜨거운 돌솥에 담아 먹는 돌솥비빔밥도 인기가 많습니다. "
     "여러 재료가 어우러져 영양이 골고루 들어 있습니다. "
     "콩나물, 시금치, 고사리, 도라지 같은 나물이 자주 쓰입니다. "
     "매운 것을 못 먹는 사람은 고추장 대신 간장으로 비벼 먹기도 합니다."),
    ("태권도", "태권도는 한국에서 시작된 무술로 손과 발을 사용해 겨루는 운동입니다. "
     "2000년 시드니 올림픽부터 정식 종목이 되었습니다. "
     "몸과 마음을 함께 단련하며 예절을 중요하게 여깁니다. "
     "실력에 따라 띠의 색이 바뀌며 검은 띠는 유단자를 뜻합니다. "
     "정해진 동작을 순서대로 하는 품새와 상대와 겨루는 겨루기가 있습니다."),
    ("날씨 확인", "외출하기 전에는 일기 예보로 기온과 강수 확률을 확인하는 것이 좋습니다. "
     "비 올 확률이 높으면 우산을 챙기고, 미세먼지가 나쁘면 마스크를 씁니다. "
     "여름에는 폭염 특보가 내려지면 한낮 야외 활동을 줄여야 합니다. "
     "겨울에는 도로가 얼어 미끄러울 수 있으니 천천히 걷는 것이 안전합니다. "
     "기상청 누리집과 앱에서 지역별 날씨를 자세히 볼 수 있습니다."),
    ("은행 업무", "은행 계좌를 만들려면 신분증을 가지고 은행에 가거나 모바일 앱으로 신청하면 됩니다. "
     "요즘은 대부분의 송금과 조회를 스마트폰 앱으로 처리할 수 있습니다. "
     "다른 사람에게 돈을 보낼 때는 받는 사람의 이름과 계좌 번호를 꼭 확인해야 합니다. "
     "은행을 사칭해 개인정보를 묻는 전화는 보이스피싱일 수 있으니 조심해야 합니다. "
     "카드를 잃어버렸다면 바로 카드사에 분실 신고를 해야 합니다."),
]
