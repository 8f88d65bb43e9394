import random

from echorag.learning import MarkPending, Nothing, PolicyConfig, RetryLater, StartRun, TrainingPolicy


def policy(**config) -> TrainingPolicy:
    return TrainingPolicy(PolicyConfig(**{"batch_size": 100, **config}))


def test_a_full_batch_starts_a_run_on_everything_since_the_watermark():
    p = policy(batch_size=10)
    assert isinstance(p.data_arrived(9), Nothing) and not p.should_train
    assert p.data_arrived(10) == StartRun(0, 10)
    assert p.is_running and p.new_data == 10


def test_the_original_example_100_then_200_during_the_run():
    p = policy(batch_size=100)
    assert p.data_arrived(100) == StartRun(0, 100)
    decisions = [p.data_arrived(seq) for seq in range(101, 301)]
    assert decisions.count(MarkPending("a batch arrived during the run")) == 1  # one pending run, not two
    assert p.pending and all(isinstance(d, (Nothing, MarkPending)) for d in decisions)
    assert p.run_succeeded() == StartRun(100, 300)  # one run on all 200
    assert p.watermark == 100 and not p.pending
    assert isinstance(p.run_succeeded(), Nothing) and p.watermark == 300 and p.new_data == 0


def test_a_small_trickle_during_a_run_waits_for_its_own_batch():
    p = policy(batch_size=10)
    p.data_arrived(10)
    assert isinstance(p.data_arrived(15), Nothing) and not p.pending
    assert isinstance(p.run_succeeded(), Nothing) and p.watermark == 10
    assert p.data_arrived(20) == StartRun(10, 20)  # nothing skipped, nothing twice


def test_auto_trigger_off_and_disabled():
    p = policy(batch_size=10, auto_trigger=False)
    assert p.data_arrived(50) == Nothing("auto trigger is off") and p.should_train
    assert p.manual_trigger() == StartRun(0, 50)
    off = policy(batch_size=10, enabled=False)
    assert isinstance(off.data_arrived(50), Nothing) and isinstance(off.manual_trigger(force=True), Nothing)


def test_failure_leaves_data_pending_retries_with_backoff_then_gives_up():
    p = policy(batch_size=10, max_attempts=3, retry_backoff_s=5, retry_backoff_factor=2)
    assert p.data_arrived(10) == StartRun(0, 10, attempt=1)
    assert p.run_failed("CUDA OOM") == RetryLater(5, attempt=2)
    assert p.watermark == 0 and p.new_data == 10  # nothing consumed
    assert p.data_arrived(14) == Nothing("a retry is scheduled")  # no run before the backoff ends
    assert p.retry_due() == StartRun(0, 14, attempt=2)  # the retry takes what arrived meanwhile
    assert p.run_failed() == RetryLater(10, attempt=3)
    assert p.retry_due() == StartRun(0, 14, attempt=3)
    gave_up = p.run_failed()
    assert isinstance(gave_up, Nothing) and "gave up" in gave_up.reason
    assert p.watermark == 0 and p.snapshot()["stalled"]
    assert isinstance(p.retry_due(), Nothing)
    # A few more turns do not hammer a broken trainer ...
    assert isinstance(p.data_arrived(20), Nothing)
    # ... a human can try again (attempts counted afresh) ...
    assert p.manual_trigger() == StartRun(0, 20, attempt=1)
    assert p.run_succeeded() == Nothing("0/10 new turns") and p.watermark == 20


def test_a_fresh_batch_after_giving_up_tries_again():
    p = policy(batch_size=10, max_attempts=1)
    p.data_arrived(10)
    assert isinstance(p.run_failed(), Nothing)
    assert isinstance(p.data_arrived(19), Nothing)
    assert p.data_arrived(20) == StartRun(0, 20, attempt=1)


def test_backoff_is_capped():
    config = PolicyConfig(retry_backoff_s=30, retry_backoff_factor=2, retry_backoff_max_s=100)
    assert [config.backoff(n) for n in (1, 2, 3, 4)] == [30, 60, 100, 100]


def test_manual_force_trains_below_the_batch_size():
    p = policy(batch_size=100)
    assert p.manual_trigger() == Nothing("no new data")
    p.data_arrived(3)
    assert "use force" in p.manual_trigger().reason
    assert p.manual_trigger(force=True) == StartRun(0, 3)


def test_manual_trigger_during_a_run_is_refused_but_queues_one_run():
    p = policy(batch_size=100)
    p.data_arrived(100)
    p.data_arrived(105)
    assert isinstance(p.manual_trigger(force=True), MarkPending)  # the API answers 409
    assert p.pending
    assert p.run_succeeded() == StartRun(100, 105)  # the queued run, below batch size


def test_a_queued_run_with_nothing_new_does_nothing():
    p = policy(batch_size=10)
    p.data_arrived(10)
    p.manual_trigger()
    assert isinstance(p.run_succeeded(), Nothing) and not p.pending and not p.is_running


def test_lowering_the_batch_size_at_runtime_triggers():
    p = policy(batch_size=100)
    assert isinstance(p.data_arrived(40), Nothing)
    assert p.settings_changed(batch_size=50) == Nothing("40/50 new turns")
    assert p.settings_changed(batch_size=30) == StartRun(0, 40)
    assert p.config.batch_size == 30


def test_turning_auto_trigger_on_starts_a_waiting_batch():
    p = policy(batch_size=10, auto_trigger=False)
    p.data_arrived(12)
    assert p.settings_changed(auto_trigger=True) == StartRun(0, 12)


def test_settings_change_during_a_run_marks_pending():
    p = policy(batch_size=100)
    p.data_arrived(100)
    p.data_arrived(130)
    assert isinstance(p.settings_changed(batch_size=20), MarkPending)
    assert p.run_succeeded() == StartRun(100, 130)


def test_restored_state_and_external_runs():
    p = TrainingPolicy(PolicyConfig(batch_size=10), watermark=30, max_seq=35)
    assert p.new_data == 5 and isinstance(p.data_arrived(35), Nothing)
    assert isinstance(p.run_started(30, 35), Nothing) and p.is_running
    assert p.run_started(30, 35) == Nothing("run recorded")  # confirming is idempotent
    p.run_succeeded()
    assert p.watermark == 35


def test_a_long_random_schedule_trains_every_turn_exactly_once():
    rng = random.Random(0)
    p = policy(batch_size=7, max_attempts=3)
    seq, trained = 0, []
    for _ in range(5000):
        action = rng.random()
        if action < 0.6:
            seq += 1
            p.data_arrived(seq)
        elif action < 0.75 and p.is_running:
            trained.extend(range(p.running[0] + 1, p.running[1] + 1))
            p.run_succeeded()
        elif action < 0.85 and p.is_running:
            p.run_failed("boom")
        elif action < 0.9:
            p.retry_due()
        elif action < 0.95:
            p.manual_trigger(force=rng.random() < 0.5)
        else:
            p.settings_changed(batch_size=rng.randint(1, 15))
    assert p.watermark > 1000
    assert trained == list(range(1, p.watermark + 1))  # in order, no gaps, no repeats
