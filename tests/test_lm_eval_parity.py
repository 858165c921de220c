"""evaluate.py --tasks against lm-evaluation-harness itself, item by item, on the same model and the same items.

The model is the tiny test run exported by export.py; evaluate.py loads the export with --init_from=DIR, lm-eval
with model="hf". lm-eval runs its own installed task definitions (hellaswag, arc_easy, arc_challenge, mmlu's
template, sst2), included by local YAML files that only point the data at our JSONL fixtures in tests/task_data.
Per item: every choice's log-likelihood within 1e-4, acc and acc_norm identical; per task the means identical.
Zero-shot for all five, and 2-shot where lm-eval's random sampler draws the shots (hellaswag, arc_easy, sst2), so
the K-shot prompts are the same too."""
import os

import pytest

from conftest import ROOT, run_inline, run_script

pytestmark = pytest.mark.slow  # parity with lm-evaluation-harness

lm_eval = pytest.importorskip("lm_eval")
LM_EVAL_TASKS = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
FIXTURES = os.path.join(ROOT, "tests", "task_data")

# our task -> (lm-eval's YAML to include, the fixture files by lm-eval split name, extra YAML lines)
YAMLS = {
    "hellaswag": ("hellaswag/hellaswag.yaml", {"validation": "hellaswag.jsonl", "train": "hellaswag.train.jsonl"}, ""),
    "arc_easy": ("arc/arc_easy.yaml", {"test": "arc_easy.jsonl", "train": "arc_easy.train.jsonl"},
                 "validation_split: null\n"),
    "arc_challenge": ("arc/arc_challenge.yaml", {"test": "arc_challenge.jsonl", "train": "arc_challenge.train.jsonl"},
                      "validation_split: null\n"),
    # lm-eval's MMLU is one task per subject, each with its description; one task over all subjects says the same
    # with a template
    "mmlu": ("mmlu/default/_default_template_yaml", {"test": "mmlu.jsonl", "dev": "mmlu.dev.jsonl"},
             'description: "The following are multiple choice questions (with answers) about '
             "{{subject.replace('_', ' ')}}.\\n\\n\"\n"),
    "sst2": ("glue/sst2/default.yaml", {"validation": "sst2.jsonl", "train": "sst2.train.jsonl"}, ""),
}
FEWSHOT = ["hellaswag", "arc_easy", "sst2"]  # lm-eval's random sampler draws their shots (MMLU takes the first K)


@pytest.fixture(scope="module")
def hf_model(tiny_run, tmp_path_factory):
    """The tiny run, exported as users export (a GPT-2 folder with GPT-2's tokenizer; a 32-token context, so most
    items are also left-truncated, by both tools alike)."""
    folder = tmp_path_factory.mktemp("export") / "tiny"
    run_script("export.py", f"--out_dir={tiny_run}", f"--output={folder}")
    return str(folder)


def lm_eval_run(hf_model, yaml_dir, names):
    from lm_eval.tasks import TaskManager
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_model},dtype=float32", device="cpu",
                                  tasks=names, batch_size=8, task_manager=TaskManager(include_path=str(yaml_dir)),
                                  log_samples=True)
    return {n: (out["results"][n], sorted(out["samples"][n], key=lambda s: s["doc_id"])) for n in names}


def assert_same(ours, theirs, name):
    summary, samples = theirs
    items = ours["items"]
    diff = max(abs(a - r[0]) for item, sample in zip(items, samples)
               for a, r in zip(item["loglikelihoods"], sample["filtered_resps"]))
    print(f"{name}: {len(items)} items, largest log-likelihood difference {diff:.2e}")  # (shown with pytest -s)
    assert len(items) == len(samples) == summary["sample_len"] == ours["n"], name
    for item, sample in zip(items, samples):
        lls = [r[0] for r in sample["filtered_resps"]]
        assert item["loglikelihoods"] == pytest.approx(lls, abs=1e-4, rel=0), (name, sample["doc_id"])
        assert item["acc"] == sample["acc"], (name, sample["doc_id"])
        if "acc_norm" in sample:
            assert item["acc_norm"] == sample["acc_norm"], (name, sample["doc_id"])
    assert ours["acc"] == summary["acc,none"], name
    if "acc_norm,none" in summary:
        assert ours["acc_norm"] == summary["acc_norm,none"], name


def test_loglikelihoods_and_accuracies_equal_lm_evaluation_harness(hf_model, tmp_path, monkeypatch):
    runs = [(name, 0) for name in YAMLS] + [(name, 2) for name in FEWSHOT]
    for name, k in runs:  # lm-eval's own task, its data pointed at our fixture, as task nash_<name>_<k>shot
        include, files, extra = YAMLS[name]
        data_files = "".join(f"    {split}: {os.path.join(FIXTURES, f)}\n" for split, f in files.items())
        (tmp_path / f"{name}_{k}.yaml").write_text(
            f"include: {os.path.join(LM_EVAL_TASKS, include)}\ntask: nash_{name}_{k}shot\ntag: []\nnum_fewshot: {k}\n"
            f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n{data_files}{extra}")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = lm_eval_run(hf_model, tmp_path, [f"nash_{name}_{k}shot" for name, k in runs])
    for names, k in ((list(YAMLS), 0), (FEWSHOT, 2)):
        g = run_inline(monkeypatch, "evaluate.py", f"--init_from={hf_model}", f"--tasks={','.join(names)}",
                       f"--task_data={FIXTURES}", f"--num_fewshot={k}", "--device=cpu", "--dtype=float32",
                       "--batch_size=3")
        for name in names:
            assert g["task_results"][name]["num_fewshot"] == k
            assert_same(g["task_results"][name], theirs[f"nash_{name}_{k}shot"], f"{name} {k}-shot")
