"""The /chat pipeline in one process (no Ray): real e5, Chroma, the tiny model and
the learning loop's SQLite store, as ``LocalServices`` wires them."""

import asyncio

import pytest

from echorag.config import load_settings
from echorag.learning.jobs import local_train_fn
from echorag.learning.loop import LearningLoop
from echorag.models.generation import LocalGenerator
from echorag.retrieval.embedding import E5Embedder
from echorag.retrieval.hybrid import Retriever
from echorag.retrieval.vector_store import VectorStore
from echorag.serving.memory import SessionMemory
from echorag.serving.pipeline import ChatPipeline
from echorag.serving.routing import Answerer
from echorag.serving.schemas import ChatRequest
from echorag.serving.services import LocalServices

DOCS = [
    {"id": "jeju", "text": "제주도는 화산섬으로 한라산이 있다. 감귤과 돌하르방으로 유명하다."},
    {"id": "kimchi", "text": "김치는 배추를 소금에 절인 뒤 고춧가루 양념으로 버무려 발효시킨 음식이다."},
]


class SlowMemoryServices(LocalServices):
    """Indexing a turn into memory takes a noticeable while, as embedding does on CPUs."""

    delay_s = 3.0

    async def remember(self, turn, question_vector) -> None:
        await asyncio.sleep(self.delay_s)
        await super().remember(turn, question_vector)


def parts(tmp_path, tiny_model_path):
    """Settings, the real e5 embedder and a retriever over real Chroma in ``tmp_path``."""
    settings = load_settings(data_dir=str(tmp_path), generator_model=str(tiny_model_path), max_new_tokens=8)
    embedder = E5Embedder()
    retriever = Retriever.from_settings(VectorStore.from_settings(settings, embedder.id, embedder.dim), settings,
                                        embedder.embed_passages)
    return settings, embedder, retriever


@pytest.fixture()
def pipeline(tmp_path, tiny_model_path, one_torch_thread):
    settings, embedder, retriever = parts(tmp_path, tiny_model_path)
    generator = LocalGenerator(str(tiny_model_path))
    loop = LearningLoop(settings, local_train_fn(tiny_model_path))
    services = SlowMemoryServices(settings, embedder, retriever, generator, loop)
    services.ingest(DOCS)
    return ChatPipeline(services, SessionMemory(settings.memory_turns), Answerer(generator.name, generator.kind)), retriever


def test_the_answer_does_not_wait_for_memory_but_a_follow_up_finds_the_turn(pipeline):
    chat, retriever = pipeline

    async def scenario():
        first = await chat.chat(ChatRequest(message="내 강아지 이름은 초코야", user_id="alice", session_id="s1"))
        indexed_when_answered = retriever.counts()["memory"]
        # Another user's question does not wait for alice's turn to be indexed.
        other = await chat.chat(ChatRequest(message="김치는 어떻게 만들어?", user_id="bob", session_id="s2"))
        indexed_before_follow_up = retriever.counts()["memory"]
        follow_up = await chat.chat(ChatRequest(message="내 강아지 이름이 뭐였지?", user_id="alice", session_id="s3"))
        await chat.remembered()
        return first, indexed_when_answered, other, indexed_before_follow_up, follow_up

    first, indexed_when_answered, other, indexed_before_follow_up, follow_up = asyncio.run(scenario())
    assert first.mlops_info.collected  # collection is on the answer's path: committed first
    assert indexed_when_answered == 0
    assert other.timing.memory < SlowMemoryServices.delay_s / 2
    assert indexed_before_follow_up == 0  # so the follow-up had to wait for alice's turn
    assert any(r.collection == "memory" and r.id == first.turn_id for r in follow_up.search_results)
    assert not any(r.collection == "memory" and r.id == first.turn_id for r in other.search_results)
    assert retriever.counts()["memory"] == 3


class CountingServices(LocalServices):
    """Counts what reaches the language model."""

    generated = 0

    async def generate(self, messages, adapter, analysis, student=False):
        self.generated += 1
        return await super().generate(messages, adapter, analysis, student)

    async def stream(self, messages, adapter, analysis, student=False):
        self.generated += 1
        async for piece in super().stream(messages, adapter, analysis, student):
            yield piece


def test_the_selector_answers_no_answer_without_calling_the_model(tmp_path, tiny_model_path, one_torch_thread):
    from echorag.answering.prompts import NO_ANSWER
    from echorag.serving.schemas import DoneEvent, TokenEvent

    settings, embedder, retriever = parts(tmp_path, tiny_model_path)
    services = CountingServices(settings, embedder, retriever, LocalGenerator(str(tiny_model_path)))
    services.ingest(DOCS)
    chat = ChatPipeline(services, SessionMemory(settings.memory_turns), Answerer("tiny", "tiny"))

    async def scenario():
        off_topic = await chat.chat(ChatRequest(message="화성의 수도는 어디인가요?", session_id="s1"))
        after_off_topic = services.generated
        on_topic = await chat.chat(ChatRequest(message="제주도에는 어떤 산이 있나요?", session_id="s2"))
        events = [e async for e in chat.chat_stream(ChatRequest(message="화성의 수도는 어디인가요?", session_id="s3"))]
        return off_topic, after_off_topic, on_topic, events

    off_topic, after_off_topic, on_topic, events = asyncio.run(scenario())
    assert off_topic.response == NO_ANSWER and off_topic.abstained
    assert after_off_topic == 0 and off_topic.usage.completion_tokens == 0
    assert not on_topic.abstained and services.generated == 1 and on_topic.usage.completion_tokens > 0
    assert [e.text for e in events if isinstance(e, TokenEvent)] == [NO_ANSWER]
    assert isinstance(events[-1], DoneEvent) and events[-1].response.abstained and services.generated == 1


def test_a_greeting_gets_a_polite_reply_from_no_model_and_is_not_collected(tmp_path, tiny_model_path, one_torch_thread):
    from echorag.answering.small_talk import REPLIES
    from echorag.serving.schemas import DoneEvent, TokenEvent

    settings, embedder, retriever = parts(tmp_path, tiny_model_path)
    loop = LearningLoop(settings, local_train_fn(tiny_model_path))
    services = CountingServices(settings, embedder, retriever, LocalGenerator(str(tiny_model_path)), loop)
    services.ingest(DOCS)
    chat = ChatPipeline(services, SessionMemory(settings.memory_turns), Answerer("tiny", "tiny"))

    async def scenario():
        hello = await chat.chat(ChatRequest(message="안녕하세요!", session_id="s1"))
        events = [e async for e in chat.chat_stream(ChatRequest(message="고마워요", session_id="s1"))]
        question = await chat.chat(ChatRequest(message="안녕하세요, 제주도에는 어떤 산이 있나요?", session_id="s1"))
        return hello, events, question

    hello, events, question = asyncio.run(scenario())
    assert hello.response == REPLIES["greeting"] and "EchoRAG" in hello.response
    assert not hello.abstained and hello.search_results == [] and not hello.mlops_info.collected
    assert [e.text for e in events if isinstance(e, TokenEvent)] == [REPLIES["thanks"]]
    assert isinstance(events[-1], DoneEvent) and events[-1].response.response == REPLIES["thanks"]
    assert services.generated == 1  # only the real question reached the model
    assert question.search_results and question.mlops_info.collected
    assert loop.store.counts().total == 1  # small talk never becomes training data
    assert [m.user for m in question.memory_content] == ["안녕하세요!", "고마워요"]


def test_a_stored_turn_trains_on_exactly_the_tokens_the_generator_was_served(tmp_path, tiny_model_path, one_torch_thread):
    """No train/serve skew: the stored turn keeps the served messages, and the prompt part
    of its training example is token for token what LocalGenerator encoded."""
    from echorag.learning.dataset import run_data
    from echorag.learning.train_config import TrainConfig
    from echorag.models.chat_tokens import IGNORE, encode_chat

    settings, embedder, retriever = parts(tmp_path, tiny_model_path)
    generator = LocalGenerator(str(tiny_model_path))
    loop = LearningLoop(settings, local_train_fn(tiny_model_path))
    served = []

    class Recording(LocalServices):
        async def generate(self, messages, adapter, analysis, student=False):
            served.append(messages)
            return await super().generate(messages, adapter, analysis, student)

    services = Recording(settings, embedder, retriever, generator, loop)
    services.ingest(DOCS)
    chat = ChatPipeline(services, SessionMemory(settings.memory_turns), Answerer(generator.name, generator.kind))

    async def scenario():
        first = await chat.chat(ChatRequest(message="제주도에는 어떤 산이 있나요?", session_id="s1"))
        second = await chat.chat(ChatRequest(message="제주도는 무엇으로 유명한가요?", session_id="s1"))
        return first, second

    first, second = asyncio.run(scenario())
    stored = loop.store.get_turn(second.turn_id)
    assert stored.prompt == served[1] and not stored.closed_book
    assert [m["role"] for m in stored.prompt] == ["system", "user", "assistant", "user"]  # memory turn inside
    assert stored.backend == "tiny" and stored.label == "self"

    served_ids = generator._encode([served[1]])["input_ids"][0].tolist()
    example = encode_chat(generator.tokenizer, stored.messages(), TrainConfig().max_length)
    first_label = next(i for i, label in enumerate(example["labels"]) if label != IGNORE)
    assert example["input_ids"][:first_label] == served_ids
    assert generator.tokenizer.decode(example["input_ids"][first_label:], skip_special_tokens=True).strip() == \
        second.response
    data = run_data(loop.store, 0, loop.store.max_seq(), TrainConfig(holdout_fraction=0.0, train_on="all"))
    assert stored.messages() in data.train
    loop.close()


def test_a_retried_message_with_the_same_idempotency_key_is_one_turn(pipeline):
    """A client that lost the response retries with its Idempotency-Key: the same turn id,
    acknowledged as collected, stored once. The key names a message in its session only."""
    chat, _ = pipeline
    store = chat.services.loop.store
    ask = ChatRequest(message="제주도에는 어떤 산이 있나요?", session_id="s1")

    async def scenario():
        first = await chat.chat(ask, request_key="msg-1")
        retry = await chat.chat(ask, request_key="msg-1")
        stored = store.counts().total
        elsewhere = await chat.chat(ask.model_copy(update={"session_id": "s2"}), request_key="msg-1")
        unkeyed = await chat.chat(ask)
        return first, stored, retry, elsewhere, unkeyed

    first, stored, retry, elsewhere, unkeyed = asyncio.run(scenario())
    assert first.mlops_info.collected and stored == 1
    assert retry.turn_id == first.turn_id and retry.mlops_info.collected
    assert store.get_turn(first.turn_id).assistant == first.response  # the retry did not overwrite it
    assert elsewhere.turn_id != first.turn_id and unkeyed.turn_id != first.turn_id
