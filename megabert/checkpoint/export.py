"""Turn a training checkpoint into a plain model directory (config.json + one model.safetensors, fp32).

    python -m megabert.checkpoint.export runs/tiny/checkpoints runs/tiny/model      # latest checkpoint
    python -m megabert.checkpoint.export runs/tiny/checkpoints/step_0000300 out/

Runs offline on one process (no GPU, no process group): ZeRO 1-3 checkpoints are consolidated from their fp32
master partitions with DeepSpeed's zero_to_fp32; a ZeRO-0 checkpoint holds the module in its training dtype,
which is upcast. The result loads with megabert.model.pretrained (fine-tuning, inference, converters).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path

import torch

from megabert.config import ModelConfig, from_dict
from megabert.model.pretrained import TokenizerError, attach_tokenizer, save_pretrained
from megabert.checkpoint.manager import ENGINE_TAG, STATE_FILE, latest_checkpoint
from megabert.utils.logging import get_logger

log = get_logger(__name__)


def module_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The module as DeepSpeed saved it (its training dtype), upcast to fp32."""
    states = torch.load(checkpoint / ENGINE_TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}


def consolidated_state_dict(checkpoint: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 state dict of the whole model from a megabert checkpoint directory (fp32 master weights when the
    checkpoint holds ZeRO partitions DeepSpeed's zero_to_fp32 can read, else the saved module)."""
    if zero_stage == 0:
        return module_state_dict(checkpoint)
    if not torch.cuda.is_available():  # reading files needs no accelerator: no "Setting accelerator to CPU" warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with _quiet():  # zero_to_fp32 prints five lines and a progress bar per export
            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=ENGINE_TAG)
    except ValueError as e:  # e.g. DeepSpeed's BF16_Optimizer partitions (bf16 + ZeRO-1 + fp32 accumulation)
        if zero_stage == 3:
            raise
        log.warning("zero_to_fp32 cannot read %s (%s); exporting the saved module weights instead", checkpoint, e)
        return module_state_dict(checkpoint)


@contextlib.contextmanager
def _quiet():
    """stdout and stderr captured (tqdm bars included); logged at debug level afterwards."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        text = (out.getvalue() + err.getvalue()).strip()
        if text:
            log.debug("zero_to_fp32: %s", text)


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path) -> Path:
    """Writes the model of `checkpoint` (a step directory, or a checkpoint.dir for its latest) to output_dir."""
    from megabert.model.bert import MosaicBertForMaskedLM

    path = Path(checkpoint)
    if not (path / STATE_FILE).is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path} is not a megabert checkpoint and holds no complete checkpoint")
        path = found
    run = json.loads((path / "config.json").read_text())
    if run["parallel"]["tensor_parallel_size"] > 1:
        raise ValueError(f"{path} is tensor-parallel; export it with: python tools/convert_checkpoint.py merge-tp "
                         f"{path} OUT")
    model_cfg = from_dict(ModelConfig, run["model"], "model.")
    model = MosaicBertForMaskedLM(model_cfg)
    missing, unexpected = model.load_state_dict(consolidated_state_dict(path, run["parallel"]["zero_stage"]),
                                                strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    state = json.loads((path / STATE_FILE).read_text())
    out = save_pretrained(model, output_dir, model_cfg,
                          extra={"source_checkpoint": str(path), "step": state["step"],
                                 "consumed_samples": state["consumed_samples"]})
    data = run["data"]
    try:  # the tokenizer travels with the model, so fine-tuning and conversion need no flags
        attach_tokenizer(out, data["tokenizer_type"], data.get("vocab_file"), data.get("tokenizer_model"))
    except TokenizerError as e:
        log.warning("exported %s without tokenizer files: %s", out, e)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a step_* checkpoint directory, or checkpoint.dir (its latest is used)")
    parser.add_argument("output_dir", help="model directory to write (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.output_dir)
    print(f"exported {args.checkpoint} -> {out}")


if __name__ == "__main__":
    main()
