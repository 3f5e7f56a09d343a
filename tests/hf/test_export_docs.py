"""The Python code in docs/EXPORT.md runs as written, on tiny model dirs at the paths it names."""

import importlib.util
import re
import shlex

from tests.hf.helpers import model_dir
from tests.tasks.tiny_model import REPO_ROOT, load_tool

DOC = REPO_ROOT / "docs" / "EXPORT.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_guide_has_code_for_each_use():
    code = "\n".join(python_blocks())
    for use in ("AutoModelForMaskedLM", "SentenceTransformer(", "Trainer(", "from megabert import",
                "export_model_dir(", "trust_remote_code=True"):
        assert use in code, use


def test_every_python_block_of_the_guide_runs(tmp_path, vocab_file, monkeypatch):
    model_dir(tmp_path / "runs" / "base" / "model", vocab_file)
    model_dir(tmp_path / "runs" / "base" / "glue" / "mnli" / "model", vocab_file, head="classifier")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert blocks
    for block in blocks:  # in order: the first writes exported/, the later ones read it
        exec(compile(block, str(DOC), "exec"), {"__name__": "export_guide"})
    assert (tmp_path / "exported" / "modules.json").is_file()
    assert (tmp_path / "runs" / "hf-sst2" / "model" / "modeling_megabert.py").is_file()
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_every_command_line_of_the_guide_parses():
    """Each `convert_checkpoint.py` line names a subcommand and flags that exist; `-m` modules exist."""
    parser = load_tool("convert_checkpoint").build_parser()
    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
             for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("python")]
    assert len(commands) >= 8
    for argv in commands:
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, argv
        else:
            assert argv[1] == "tools/convert_checkpoint.py", argv
            parser.parse_args(argv[2:])
