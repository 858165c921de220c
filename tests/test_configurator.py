import subprocess
import sys

import pytest

from conftest import ROOT
from configurator import configure


def defaults():
    return {"__file__": "demo.py", "batch_size": 12, "dropout": 0.1, "compile": False, "out_dir": "out",
            "n_kv_heads": None, "os": sys}  # a module in globals is not a setting


def test_flags_are_typed():
    scope = defaults()
    settings = configure(scope, ["--batch_size=32", "--dropout=0", "--compile=true", "--out_dir=123", "--n_kv_heads=2"])
    assert settings == {"batch_size": 32, "dropout": 0.0, "compile": True, "out_dir": "123", "n_kv_heads": 2}
    assert isinstance(scope["dropout"], float) and scope["out_dir"] == "123"


def test_value_may_contain_equals_and_bare_bool_flag():
    scope = defaults()
    configure(scope, ["--out_dir=runs/a=b", "--compile"])
    assert scope["out_dir"] == "runs/a=b" and scope["compile"] is True


def test_config_file_then_flag(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("import math\nbatch_size = 64\ndropout = math.sqrt(0.0)\n")
    scope = defaults()
    configure(scope, [str(cfg), "--batch_size=8"])  # left to right: the flag wins
    assert scope["batch_size"] == 8 and scope["dropout"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--batch_sise=3"], "unknown setting 'batch_sise'.*did you mean batch_size"),
    (["--batch_size=3.5"], "'batch_size'.*expects int"),
    (["--compile=yes"], "'compile'.*expects bool"),
    (["--batch_size"], "has no value"),
    (["missing_config.py"], "config file missing_config.py not found"),
])
def test_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        configure(defaults(), argv)


def test_typo_in_config_file_is_an_error(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("batchsize = 64\n")
    with pytest.raises(SystemExit, match="unknown setting 'batchsize' in config file .*did you mean batch_size"):
        configure(defaults(), [str(cfg)])


@pytest.mark.slow
def test_help_lists_settings_with_comments(tmp_path):
    script = tmp_path / "script.py"
    script.write_text('"""A demo script."""\nimport sys\nsys.path.insert(0, %r)\nfrom configurator import configure\n'
                      'batch_size = 12  # sequences per step\nlr = 3e-4\nconfigure(globals())\n' % ROOT)
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "A demo script." in out.stdout and "--batch_size = 12  # sequences per step" in out.stdout
    assert "--lr" in out.stdout and "--sys" not in out.stdout
    bad = subprocess.run([sys.executable, str(script), "--lr=fast"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: setting 'lr' (from --lr=fast) expects float (default 0.0003), got 'fast'"]
