"""The shared run queue: workers of one runner and of another runner never take the same item, a dead runner's lock
is taken over, and a stop reaches running subprocesses with SIGTERM."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from megabert.study.queue import Claims, Processes, Slot, find_slots, run_queue

REPO = Path(__file__).resolve().parents[2]
ITEMS = [f"variant{v}/budget{b}" for v in range(3) for b in range(2)]

RUNNER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from megabert.study.queue import Claims, Processes, Slot, run_queue
out = Path({out!r})
items = {items!r}
def work(item, slot):
    time.sleep(0.5)
    with open(out / "log", "a") as f:
        f.write(f"{{item}} {{slot.name}}\\n")
    (out / item.replace("/", "_")).touch()
processes = Processes(1)
(out / "ready").touch()
while not (out / "go").exists():
    time.sleep(0.01)
run_queue(items, key=str, is_done=lambda i: (out / i.replace("/", "_")).exists(), work=work,
          slots=[Slot("other", "", "cpu")], claims=Claims(out / "locks"), processes=processes)
"""


def test_workers_of_two_runners_take_every_item_exactly_once(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", RUNNER.format(repo=str(REPO), out=str(tmp_path), items=ITEMS)])
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline:  # both runners start together
        time.sleep(0.01)
    (tmp_path / "go").touch()

    def work(item: str, slot: Slot) -> None:
        time.sleep(0.5)
        with open(tmp_path / "log", "a") as f:
            f.write(f"{item} {slot.name}\n")
        (tmp_path / item.replace("/", "_")).touch()

    slots = [Slot("gpu0", "0", "cpu"), Slot("gpu1", "1", "cpu")]
    failed = run_queue(ITEMS, key=str, is_done=lambda i: (tmp_path / i.replace("/", "_")).exists(), work=work,
                       slots=slots, claims=Claims(tmp_path / "locks"), processes=Processes(2))
    assert other.wait(timeout=60) == 0 and failed == {}
    lines = (tmp_path / "log").read_text().splitlines()
    taken = [line.split()[0] for line in lines]
    assert sorted(taken) == sorted(ITEMS)  # every item once: none twice, none left
    assert {line.split()[1] for line in lines} == {"gpu0", "gpu1", "other"}  # all three took part
    assert not list((tmp_path / "locks").iterdir())  # every lock released


def test_a_lock_is_taken_over_only_when_everyone_it_names_is_gone(tmp_path):
    claims = Claims(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cases = {"dead-runner": ({"host": claims.host, "pid": dead.pid}, True),
                 "live-runner": ({"host": claims.host, "pid": os.getpid()}, False),
                 "other-host": ({"host": claims.host + "-elsewhere", "pid": dead.pid}, False),
                 "dead-runner-live-child": ({"host": claims.host, "pid": dead.pid, "children": [alive.pid]}, False),
                 "half-written": (None, False)}
        for key, (holder, expected) in cases.items():
            claims.path(key).write_text("" if holder is None else json.dumps(holder))
            assert claims.try_claim(key, "me") is expected, key
        assert json.loads(claims.path("dead-runner").read_text())["pid"] == os.getpid()
        claims.add_pid("dead-runner", alive.pid)
        assert json.loads(claims.path("dead-runner").read_text())["children"] == [alive.pid]
        assert not claims.try_claim("dead-runner", "someone else")
    finally:
        alive.kill()
        alive.wait()


def test_stop_sends_sigterm_to_running_work_and_nothing_new_starts(tmp_path):
    started = tmp_path / "started"
    script = ("import signal, sys, time, pathlib\n"
              "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(sys.argv[1]).write_text('term'), sys.exit(0)))\n"
              "open(sys.argv[2], 'a').write('x')\n"
              "time.sleep(60)\n")
    processes = Processes(1)
    items = ["a", "b", "c"]

    def work(item: str, slot: Slot) -> None:
        processes.run([sys.executable, "-c", script, str(tmp_path / f"{item}.term"), str(started)],
                      tmp_path / f"{item}.log", slot)

    claims = Claims(tmp_path / "locks")
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_queue(
        items, key=str, is_done=lambda i: False, work=work, slots=[Slot("cpu0", "", "cpu")], claims=claims,
        processes=processes)))
    thread.start()
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads(claims.path("a").read_text())["children"]  # the subprocess is named in the lock
    processes.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and result == {}
    assert (tmp_path / "a.term").read_text() == "term"
    assert started.read_text() == "x" and not (tmp_path / "b.log").exists()
    assert not list((tmp_path / "locks").iterdir())


def test_a_failing_item_is_reported_and_the_others_still_run(tmp_path):
    processes = Processes(1)

    def work(item: str, slot: Slot) -> None:
        code = "import sys; print('boom'); sys.exit(3)" if item == "bad" else "pass"
        processes.run([sys.executable, "-c", code], tmp_path / f"{item}.log", slot)
        (tmp_path / item).touch()

    failed = run_queue(["bad", "good"], key=str, is_done=lambda i: (tmp_path / i).exists(), work=work,
                       slots=[Slot("cpu0", "", "cpu")], claims=Claims(tmp_path / "locks"), processes=processes)
    assert list(failed) == ["bad"] and "exited with 3" in failed["bad"] and "boom" in failed["bad"]
    assert (tmp_path / "good").exists()


def test_one_slot_per_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert find_slots() == [Slot("gpu2", "2", "cuda"), Slot("gpu3", "3", "cuda")]
    assert find_slots(["5"]) == [Slot("gpu5", "5", "cuda")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert find_slots(cpu_workers=2) == [Slot("cpu0", "", "cpu"), Slot("cpu1", "", "cpu")]


def test_an_item_that_stays_unfinished_is_taken_once_and_reported(tmp_path):
    calls = []
    failed = run_queue(["x"], key=str, is_done=lambda i: False, work=lambda item, slot: calls.append(item),
                       slots=[Slot("cpu0", "", "cpu"), Slot("cpu1", "", "cpu")], claims=Claims(tmp_path),
                       processes=Processes(2))
    assert calls == ["x"] and "still looks unfinished" in failed["x"]


def test_a_run_that_would_end_after_the_time_limit_is_not_started_and_the_limit_stops_the_one_running(
        tmp_path, sample_corpus):
    from megabert.study.runner import StudyRunner
    from megabert.study.spec import load_study
    from tests.study.test_spec import write_study

    # budgets of 0.05 and 1 minute, 0.02 min (1.2 s) of overhead, a deadline 6 s away: a 0.05-min run (4.2 s)
    # fits at the start
    study = load_study(write_study(tmp_path, sample_corpus, budgets_minutes=[0.05, 1.0]))
    processes = Processes(1)
    runner = StudyRunner(study, [Slot("cpu0", "", "cpu")], processes, deadline=time.monotonic() + 6.0,
                         overhead_minutes=0.02)
    long_run = next(r for r in study.runs() if r.budget_minutes == 1.0)
    assert runner.fits(long_run)  # longer than the whole sitting: started while half of it is left
    runner.sitting_seconds = 120.0  # as if the sitting were 2 minutes long, with 6 s left: it would not end in time
    assert not runner.fits(long_run) and long_run.id in runner.postponed
    runner.sitting_seconds = 6.0
    runner.eval_meta = {}  # no evaluation set needed: the work below stands in for every stage
    started = []
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[1], 'w').write('term'), sys.exit(0)))\n"
              "time.sleep(60)\n")

    def work(run, slot):
        started.append(run.id)
        flag = tmp_path / f"{len(started)}.term"
        processes.run([sys.executable, "-c", script, str(flag)], tmp_path / f"{len(started)}.log", slot)

    runner.work = work
    begin = time.monotonic()
    assert runner.run() == {}
    assert started == ["mosaicbert/0.05min"]  # nothing new starts after the limit stopped the first
    assert (tmp_path / "1.term").read_text() == "term"  # SIGTERM, as a signal to the runner sends
    assert time.monotonic() - begin < 15  # at the limit, not after the work's 60 s
