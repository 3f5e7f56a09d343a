"""Who am I, how many are we, and where is rank 0: one answer for every launcher.

    env = discover_env()          # reads the environment only: no process group, no network
    cfg.validate_world(env.world_size)   # bad configs fail here, before anything starts
    device = init_distributed(env, backend="auto", device="auto")

Launchers, in the order they are recognised:
  env     torchrun, the deepspeed launcher, torch.distributed.launch: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
  mpi     mpirun / mpiexec (Open MPI, MPICH, Intel MPI): ranks from mpi4py when installed (rank 0's address and
          a free port are broadcast over MPI), else from OMPI_COMM_WORLD_* / PMI_* variables
  slurm   srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; rank 0 is the first host of the step's node list
          (`scontrol show hostnames`), the port derives from the job id so every rank agrees without talking
  single  plain `python pretrain_bert.py`: a one-process group on 127.0.0.1 and a free port
MPI is checked before SLURM because `mpirun` inside an allocation runs its daemons with srun, whose SLURM_PROCID
is the daemon's, not the rank's. MASTER_ADDR / MASTER_PORT in the environment always win.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str
    """'env', 'mpi', 'slurm' or 'single'."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def discover_env(environ: Optional[Mapping[str, str]] = None) -> DistEnv:
    """Reads rank, world size and rendezvous from the launcher's environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistEnv(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)),
                       int(env.get("LOCAL_WORLD_SIZE", world)), env.get("MASTER_ADDR", "127.0.0.1"),
                       int(env.get("MASTER_PORT", DEFAULT_PORT)), "env")
    if any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
        return _discover_mpi(env)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return _discover_slurm(env)
    return DistEnv(0, 1, 0, 1, env.get("MASTER_ADDR", "127.0.0.1"),
                   int(env.get("MASTER_PORT", 0)) or _free_port(), "single")


def _discover_slurm(env: Mapping[str, str]) -> DistEnv:
    world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_NTASKS_PER_NODE", str(world)))
    local_world = int(re.match(r"\d+", per_node).group()) if re.match(r"\d+", per_node) else world
    addr = env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "")))
    port = int(env.get("MASTER_PORT", 0)) or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
    return DistEnv(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)), local_world, addr, port,
                   "slurm")


def _discover_mpi(env: Mapping[str, str]) -> DistEnv:
    try:
        from mpi4py import MPI  # optional: gives the rendezvous for free on many nodes
    except ImportError:
        MPI = None
    if MPI is not None:
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        root = (env.get("MASTER_ADDR") or socket.gethostbyname(socket.gethostname()),
                int(env.get("MASTER_PORT", 0)) or _free_port()) if comm.Get_rank() == 0 else None
        addr, port = comm.bcast(root, root=0)
        return DistEnv(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(), addr, port, "mpi")
    rank = int(env.get("OMPI_COMM_WORLD_RANK", env.get("PMI_RANK", env.get("PMIX_RANK", 0))))
    world = int(env.get("OMPI_COMM_WORLD_SIZE", env.get("PMI_SIZE", 0)))
    local_rank = int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", env.get("MPI_LOCALRANKID", 0)))
    local_world = int(env.get("OMPI_COMM_WORLD_LOCAL_SIZE", env.get("MPI_LOCALNRANKS", 0)))
    if world == 0:
        raise RuntimeError("launched by MPI but the world size is not in the environment; pip install mpi4py")
    addr = env.get("MASTER_ADDR")
    if addr is None:
        if local_world != world:
            raise RuntimeError("launched by MPI over several nodes without mpi4py: pip install mpi4py, or export "
                               "MASTER_ADDR (rank 0's host) and MASTER_PORT to every rank (mpirun -x MASTER_ADDR)")
        addr = "127.0.0.1"
    return DistEnv(rank, world, local_rank, local_world or world, addr, int(env.get("MASTER_PORT", DEFAULT_PORT)),
                   "mpi")


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'. Asks scontrol when it is installed."""
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    prefix, ranges = head.group(1), head.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def resolve_device(setting: str, local_rank: int) -> torch.device:
    """'auto' -> this rank's GPU when CUDA is available, else CPU."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("parallel.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(env: DistEnv, backend: str = "auto", device: str = "auto",
                     timeout_minutes: float = 30.0) -> torch.device:
    """Starts the default process group (idempotent) and returns this rank's device.

    Exports RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT so libraries that read them (DeepSpeed) agree.
    """
    dev = resolve_device(device, env.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      LOCAL_WORLD_SIZE=str(env.local_world_size), MASTER_ADDR=env.master_addr,
                      MASTER_PORT=str(env.master_port))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=dev if dev.type == "cuda" else None)
    return dev


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Ends the default process group, if one is running (at the end of a run; the next start makes a new one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
