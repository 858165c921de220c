"""Model and data files tried as an attacker would (issue 24, "Model files"): a config that asks for a huge model,
weights files that are hostile, damaged or lying about their size, a corrupt meta.json. Every case runs the real
script in a subprocess, as a user would, under an address-space limit (RLIMIT_AS) of a few GiB, so that an
attempt to allocate the huge model dies instead of quietly succeeding on a large machine. What each must give:
a non-zero exit and exactly one `error:` line naming the problem and the file; no traceback; never torch's
"re-run with weights_only=False" advice; and no code from a file ever run."""
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL
from nash import hf

LIMIT = 3 << 30  # address space for each script: torch needs ~1 GiB of it, a 100,000-layer model far more
TINY_HF = dict(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=32, dropout=0.0)


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run_refused(script, *args, timeout=120):
    """Run script as a user would, under LIMIT; assert it refused with one error line; returns that line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout, preexec_fn=limited, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0, output
    assert len(errors) == 1, output
    assert "Traceback" not in output and "weights_only=False" not in output and "MemoryError" not in output, output
    return errors[0]


def export_folder(path, **changes):
    """A tiny Hugging Face folder as export.py writes it (GPT-2 layout, or Llama / Qwen3 with changes)."""
    from model import GPT, GPTConfig
    from nash import hf
    torch.manual_seed(0)
    hf.export_model(GPT(GPTConfig(**{**TINY_HF, **changes})), str(path))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    rope = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    return {"gpt2": export_folder(root / "gpt2"), "llama": export_folder(root / "llama", **rope),
            "qwen3": export_folder(root / "qwen3", **rope, qk_norm=True)}


def copy_folder(src, dst, config=None, drop=()):
    """A copy of the HF folder src, with config.json's fields changed and some files left out."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    if config:
        path = dst / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return str(dst)


def copy_run(src, dst, **model_config):
    """A copy of the run folder src whose checkpoints' model_config has the given fields changed."""
    shutil.copytree(src, dst)
    for name in ("ckpt.pt", "best.pt"):
        if (dst / name).exists():
            state = torch.load(dst / name, weights_only=True)
            state["model_config"].update(model_config)
            torch.save(state, dst / name)
    return dst


# -----------------------------------------------------------------------------
# 1. a config asking for a huge model: refused from its size, before anything is allocated, at every entry point

def inference_args(script, source, tmp_path):
    return {"sample.py": ["--num_samples=1", "--max_new_tokens=2", "--device=cpu"],
            "evaluate.py": ["--max_batches=1", "--device=cpu"],
            "chat.py": ["--prompt=hi", "--max_new_tokens=2", "--device=cpu"],
            "export.py": [f"--output={tmp_path / 'export'}"]}[script] + [f"--init_from={source}"]


@pytest.mark.slow
@pytest.mark.parametrize("script, layout, change, field", [
    ("sample.py", "gpt2", {"n_layer": 100_000}, "n_layer=100000"),
    ("evaluate.py", "gpt2", {"n_positions": 10**9}, "n_positions=1000000000"),
    ("chat.py", "llama", {"num_hidden_layers": 100_000}, "num_hidden_layers=100000"),
    ("export.py", "qwen3", {"max_position_embeddings": 10**9}, "max_position_embeddings=1000000000"),
    ("sample.py", "qwen3", {"vocab_size": 10**9}, "vocab_size=1000000000"),
])
def test_huge_hf_config_is_refused_from_its_size(script, layout, change, field, folders, tmp_path):
    source = copy_folder(folders[layout], tmp_path / "huge", change)
    error = run_refused(script, *inference_args(script, source, tmp_path))
    assert "config.json" in error and "GiB" in error and field in error, error


@pytest.mark.parametrize("script, where", [("sample.py", "run"), ("evaluate.py", "file"), ("chat.py", "run"),
                                           ("export.py", "run")])
def test_huge_checkpoint_is_refused_from_its_size(script, where, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "huge", n_layers=100_000)
    source = run / "best.pt" if where == "file" else run
    error = run_refused(script, *inference_args(script, source, tmp_path))
    assert "best.pt" in error and "GiB" in error and "n_layers=100000" in error, error


@pytest.mark.parametrize("where", ["run", "file", "hf", "resume"])
def test_train_refuses_a_huge_model_to_start_from(where, tiny_run, tiny_data, folders, tmp_path):
    args = [*TINY_MODEL, "--max_steps=1", "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'out'}"]
    if where == "hf":
        source = copy_folder(folders["gpt2"], tmp_path / "huge", {"n_layer": 100_000})
        error = run_refused("train.py", *args, f"--init_from={source}")
        assert "config.json" in error and "n_layer=100000" in error, error
        return
    run = copy_run(tiny_run, tmp_path / "huge", n_layers=100_000)
    if where == "resume":  # the run's own settings say 2 layers; its checkpoint says otherwise
        error = run_refused("train.py", f"--out_dir={run}", "--init_from=resume", "--max_steps=30",
                            "--dataset=tiny", f"--data_dir={tiny_data}")
    else:
        error = run_refused("train.py", *args[:-1], f"--out_dir={tmp_path / 'out'}",
                            f"--init_from={run / 'ckpt.pt' if where == 'file' else run}")
    assert ".pt" in error and "GiB" in error and "n_layers=100000" in error, error


def test_size_limit_is_the_smaller_of_memory_and_the_address_space_limit(monkeypatch):
    """In process: the limit in force, and NASH_MAX_MODEL_GB to lower it; a model that fits is built."""
    from model import GPTConfig
    config = GPTConfig(**TINY_HF)
    hf.check_size(config, None, "x")  # fits anywhere
    monkeypatch.setenv("NASH_MAX_MODEL_GB", "0.001")
    with pytest.raises(ValueError, match=r"x describes a model of 0.0 GiB, mostly from .*NASH_MAX_MODEL_GB"):
        hf.check_size(GPTConfig(**{**TINY_HF, "n_layers": 100}), None, "x")
    monkeypatch.setenv("NASH_MAX_MODEL_GB", "lots")
    with pytest.raises(ValueError, match="NASH_MAX_MODEL_GB='lots' should be a number of GiB"):
        hf.check_size(config, None, "x")


# -----------------------------------------------------------------------------
# 2. hostile or damaged weights files: one error line each, no code run, no advice to turn the safety off

class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def safetensors_file(path, header, data=b"", length=None):
    """A safetensors file by hand: 8-byte header length, the JSON header, the data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body) if length is None else length) + body + data)


def weights_case(case, folder, marker):
    """Damage the weights of HF folder (a copy) as case says."""
    st, bin_ = folder / "model.safetensors", folder / "pytorch_model.bin"
    pad = b"\0" * os.path.getsize(st)  # as big as the real weights: a file far smaller than its config is refused
    # before it is even opened (test_weights_far_smaller_than_the_config), and these cases are about opening it
    if case == "malicious_bin":  # torch.save's zip format, with a pickle that would run a command
        st.unlink()
        torch.save({"transformer.wte.weight": torch.zeros(len(pad) // 4), "x": Evil(marker)}, bin_)
    elif case == "malicious_pickle_bin":  # an old-style (not zip) torch file: a bare pickle
        st.unlink()
        bin_.write_bytes(pickle.dumps(Evil(marker)) + pad)
    elif case == "bin_not_zip":
        st.unlink()
        bin_.write_bytes(b"this is not a torch file at all" + pad)
    elif case == "truncated":
        st.write_bytes(st.read_bytes()[:-1000])
    elif case == "header_2_40":  # a header length of 2^40 bytes
        data = st.read_bytes()
        st.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    elif case == "tensor_2_40":  # a tensor whose offsets claim 2^40 bytes
        safetensors_file(st, {"transformer.wte.weight": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}},
                         pad)
    elif case == "header_not_json":
        safetensors_file(st, b"{this is not json" + b" " * 20, pad)
    elif case == "wrong_shape":  # wte of a bigger model, declared honestly and backed by a (sparse) 8 GiB file
        n = 1 << 26
        safetensors_file(st, {"transformer.wte.weight": {"dtype": "F32", "shape": [n, 32], "data_offsets": [0, 4 * n * 32]}})
        with open(st, "r+b") as f:
            f.truncate(os.path.getsize(st) + 4 * n * 32)


@pytest.mark.slow
@pytest.mark.parametrize("case, words", [
    ("malicious_bin", "pytorch_model.bin .*(code|Python objects)"),
    ("malicious_pickle_bin", "pytorch_model.bin .*(code|Python objects|not a)"),
    ("bin_not_zip", "pytorch_model.bin .*not a"),
    ("truncated", "model.safetensors .*(truncated|ends|short)"),
    ("header_2_40", "model.safetensors .*header"),
    ("tensor_2_40", "model.safetensors .*(ends|truncated|bytes)"),
    ("header_not_json", "model.safetensors .*header.*JSON"),
    ("wrong_shape", r"model.safetensors .*transformer.wte.weight.*\(67108864, 32\).*expected"),
])
def test_damaged_or_hostile_hf_weights(case, words, folders, tmp_path):
    import re
    marker = tmp_path / "pwned"
    folder = tmp_path / "hf"
    copy_folder(folders["gpt2"], folder)
    weights_case(case, folder, marker)
    error = run_refused("sample.py", "--num_samples=1", "--max_new_tokens=2", "--device=cpu", f"--init_from={folder}")
    assert re.search(words, error), error
    assert not marker.exists(), "a weights file ran code"


@pytest.mark.parametrize("layout, script", [("llama", "chat.py"), ("qwen3", "train.py")])
def test_damaged_weights_of_llama_and_qwen3_folders(layout, script, folders, tmp_path, tiny_data):
    marker = tmp_path / "pwned"
    folder = tmp_path / "hf"
    copy_folder(folders[layout], folder)
    weights_case("malicious_bin", folder, marker)
    args = {"chat.py": ["--prompt=hi", "--max_new_tokens=2", "--device=cpu"],
            "train.py": ["--max_steps=1", "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'o'}"]}
    error = run_refused(script, *args[script], f"--init_from={folder}")
    assert "pytorch_model.bin" in error, error
    assert not marker.exists()


@pytest.mark.parametrize("case", ["truncated", "not_torch", "malicious"])
def test_damaged_or_hostile_checkpoint(case, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "pwned"
    for name in ("ckpt.pt", "best.pt"):
        if case == "truncated":
            (run / name).write_bytes((run / name).read_bytes()[:5000])
        elif case == "not_torch":
            (run / name).write_bytes(b"\x00junk" * 1000)
        else:
            torch.save({"format": "nash-llm-checkpoint/1", "model": Evil(marker)}, run / name)
    error = run_refused("sample.py", "--num_samples=1", "--max_new_tokens=2", "--device=cpu", f"--init_from={run}")
    assert "best.pt" in error, error
    assert not marker.exists()


def test_checkpoint_whose_config_is_not_a_model(tiny_run, tmp_path, tiny_data):
    run = copy_run(tiny_run, tmp_path / "run", n_layers="many")
    error = run_refused("train.py", f"--out_dir={run}", "--init_from=resume", "--max_steps=30", "--dataset=tiny",
                        f"--data_dir={tiny_data}")
    assert "ckpt.pt" in error and "n_layers" in error, error


def test_resume_from_a_checkpoint_without_model_config(tiny_run, tmp_path, tiny_data):
    """A ckpt.pt that lacks what resuming reads is one error line naming it, not a KeyError wherever it is read."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state = torch.load(run / "ckpt.pt", weights_only=True)
    del state["model_config"]
    torch.save(state, run / "ckpt.pt")
    error = run_refused("train.py", f"--out_dir={run}", "--init_from=resume", "--max_steps=30", "--dataset=tiny",
                        f"--data_dir={tiny_data}")
    assert "ckpt.pt" in error and "model_config" in error, error


# -----------------------------------------------------------------------------
# 3. train.py on a data folder whose meta.json is corrupt

def copy_of_dataset(tiny_data, tmp_path):
    """A prepared dataset to damage: (its folder, its meta.json's path, the meta as it was)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data, data / "meta.json", json.loads((data / "meta.json").read_text())


@pytest.mark.parametrize("damage, words", [
    ("not_json", "meta.json is not valid JSON"),
    ("a_list", "meta.json holds a list, not a JSON object"),
    ("shards_a_string", "meta.json's shards should be"),
    ("no_tokens", "meta.json lacks 'tokens'"),
    ("tokens_a_string", "meta.json's tokens should be"),
    ("missing_shard", "train_000.bin is missing"),
    ("shard_outside", "meta.json names a shard outside its folder"),
    ("dtype_float", "says dtype 'float64', but shards hold uint16 or uint32"),
    ("odd_size", "not a whole number of uint16 tokens"),
    ("tokenizer_a_list", "meta.json's tokenizer should be"),
])
def test_corrupt_meta_json(damage, words, tiny_data, tmp_path):
    data, path, meta = copy_of_dataset(tiny_data, tmp_path)
    if damage == "not_json":
        path.write_text("{not json")
    elif damage == "a_list":
        path.write_text("[1, 2]")
    elif damage == "shards_a_string":
        path.write_text(json.dumps({**meta, "shards": "train_000.bin"}))
    elif damage == "no_tokens":
        del meta["tokens"]
        path.write_text(json.dumps(meta))
    elif damage == "tokens_a_string":
        path.write_text(json.dumps({**meta, "tokens": {"train": "lots", "val": 3}}))
    elif damage == "missing_shard":
        (data / "train_000.bin").unlink()
    elif damage == "shard_outside":
        path.write_text(json.dumps({**meta, "shards": {**meta["shards"], "train": ["../../etc/passwd"]}}))
    elif damage == "dtype_float":
        path.write_text(json.dumps({**meta, "dtype": "float64"}))
    elif damage == "odd_size":
        with open(data / "train_000.bin", "ab") as f:
            f.write(b"\x00")
    elif damage == "tokenizer_a_list":
        path.write_text(json.dumps({**meta, "tokenizer": ["gpt2"]}))
    error = run_refused("train.py", *TINY_MODEL, "--max_steps=1", "--dataset=data", f"--data_dir={data}",
                        f"--out_dir={tmp_path / 'out'}")
    assert words in error and str(data) in error, error


@pytest.mark.parametrize("damage, words", [
    ("not_json", "meta.json is not valid JSON"),
    ("a_list", "meta.json holds a list, not a JSON object"),
    ("tokenizer_file_outside", "meta.json's tokenizer_file should be a file name in the folder"),
])
def test_tok_eval_on_a_corrupt_meta_json(damage, words, tiny_data, tmp_path):
    """tok_eval.py reads the dataset's tokenizer through the same checks of meta.json as train.py."""
    data, path, meta = copy_of_dataset(tiny_data, tmp_path)
    path.write_text({"not_json": "{not json", "a_list": "[1, 2]",
                     "tokenizer_file_outside": json.dumps({**meta, "tokenizer": "bpe-512",
                                                           "tokenizer_file": "../../etc/passwd"})}[damage])
    error = run_refused("tok_eval.py", f"--data_dir={data}")
    assert words in error and str(data) in error, error


def test_a_giant_config_json_is_not_parsed(tmp_path):
    path = tmp_path / "config.json"
    with open(path, "wb") as f:  # sparse: 1 GiB on paper, nothing on disk
        f.truncate(1 << 30)
    with pytest.raises(ValueError, match=r"config.json is not readable JSON \(ValueError: it holds 1,073,741,824 bytes"):
        hf.read_json(str(path))


@pytest.mark.parametrize("layout, change, words", [
    ("llama", {"num_attention_heads": 0}, "wrong type or range"),
    ("llama", {"hidden_size": "big"}, "wrong type"),
    ("llama", {"num_hidden_layers": 1e9}, "n_layers must be a positive integer"),
    ("gpt2", {"n_layer": -1}, "n_layers must be a positive integer"),
    ("qwen3", {"vocab_size": None}, "vocab_size must be a positive integer"),
])
def test_nonsense_config_values_are_one_line(layout, change, words, folders, tmp_path):
    """In process (the scripts turn this ValueError into their one error line, as the tests above show)."""
    from nash import hf
    source = copy_folder(folders[layout], tmp_path / "bad", change)
    with pytest.raises(ValueError, match=words) as e:
        hf.load_pretrained(source)
    assert "\n" not in str(e.value)


def test_evaluate_on_a_corrupt_meta_json(tiny_run, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "meta.json").write_text('{"shards": 3}')
    error = run_refused("evaluate.py", f"--init_from={tiny_run}", "--dataset=data", f"--data_dir={data}",
                        "--max_batches=1", "--device=cpu")
    assert "meta.json's shards should be" in error, error


@pytest.mark.slow
def test_weights_far_smaller_than_the_config(folders, tmp_path):
    """1,000 layers fit in memory, but a file of 2 layers' weights cannot fill them: refused before a model (even
    a sketch on the meta device, which for 100,000 layers takes minutes) is built."""
    source = copy_folder(folders["llama"], tmp_path / "big", {"num_hidden_layers": 1000})
    error = run_refused("sample.py", "--num_samples=1", "--max_new_tokens=2", "--device=cpu", f"--init_from={source}")
    assert "num_hidden_layers=1000" in error and "model.safetensors holds" in error and "do not belong together" in error
