"""The compiled model under the parallel layouts: on two gloo processes (the graph traced without code generation on
a CPU, so the same arithmetic as eager), ZeRO-2 -- compiled by default on a GPU -- and tensor parallelism -- compiled
on request -- give the eager run's losses step for step; ZeRO-3 with compiling forced is refused before any process
group starts."""

import pytest

from megabert.config import ConfigError, ParallelConfig
from tests.train.launch import explain, losses, run_trainer
from tests.train.test_zero_stages import STEPS, corpus_config


@pytest.mark.slow
@pytest.mark.parametrize("layout", [{"zero_stage": 2}, {"tensor_parallel_size": 2}], ids=["zero2", "tp2"])
def test_the_compiled_model_trains_like_the_eager_one_on_two_processes(tmp_path, sample_corpus, layout):
    cfg = corpus_config(tmp_path / "two", sample_corpus)
    cfg["parallel"].update(layout)
    proc = run_trainer(cfg, tmp_path, "--real-data", "--sweep", "parallel.compile=false,true", nproc=2,
                       env={"TORCH_LOGS": "recompiles"})
    assert proc.returncode == 0, explain(proc)
    assert "Recompiling" not in proc.stderr and "model compiled: parallel.compile is true" in proc.stderr
    eager, compiled = (losses(tmp_path / "two" / value) for value in ("false", "true"))
    assert sorted(compiled) == list(range(1, STEPS + 1)) and compiled == eager


def test_compiling_forced_under_zero3_is_refused_naming_the_way_out():
    with pytest.raises(ConfigError, match="parallel.compile true cannot be combined with ZeRO-3"):
        ParallelConfig(compile=True, zero_stage=3).validate()
    ParallelConfig(compile=None, zero_stage=3).validate()  # the default: eager under ZeRO-3
