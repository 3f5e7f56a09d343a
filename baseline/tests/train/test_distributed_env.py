"""Rank/world/rendezvous discovery for every launcher, from the environment alone."""

import pytest

from megabert.utils.distributed import discover_env, first_host


def test_torchrun_and_deepspeed_launcher_environment():
    env = discover_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4",
                        "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 8, 3, 4)
    assert (env.master_addr, env.master_port, env.launcher) == ("n1", 1234, "env")


def test_srun_environment_uses_first_node_and_a_port_from_the_job_id(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is parsed here
    env = discover_env({"SLURM_PROCID": "9", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                        "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_STEP_NODELIST": "gpu[007-008]",
                        "SLURM_JOB_ID": "123456"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (9, 16, 1, 8)
    assert env.master_addr == "gpu007" and env.master_port == 20000 + 123456 % 20000 and env.launcher == "slurm"


def test_inside_an_allocation_without_srun_is_a_single_process():
    env = discover_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "5"})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single")


def test_mpirun_without_mpi4py_reads_open_mpi_variables(monkeypatch):
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "mpi4py" else real_import(name, *a, **k))
    env = discover_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                        "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_ID": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (1, 2, 1, "127.0.0.1", "mpi")
    with pytest.raises(RuntimeError, match="mpi4py"):
        discover_env({"PMI_RANK": "0", "PMI_SIZE": "4", "MPI_LOCALNRANKS": "2"})  # two nodes, no rendezvous


def test_single_process_gets_a_free_port():
    env = discover_env({})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single") and env.master_port > 0


@pytest.mark.parametrize("nodelist,host", [("node1", "node1"), ("gpu[07-09,12],cpu1", "gpu07"),
                                           ("a-b[3]", "a-b3"), ("x[001,005]", "x001")])
def test_first_host_of_a_slurm_node_list(monkeypatch, nodelist, host):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert first_host(nodelist) == host
