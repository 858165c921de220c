"""
Pretraining: next-token prediction on token shards (prepare.py's), every position in the loss. This file is
also the template of an objective: each hook below is what train.py calls, with the language-model default
that sft.py and chat.py keep and dpo.py replaces.
"""
import math
import os

import torch

from nash import tokenizer
from nash.common import fail
from nash.data import TokenShards, ensure_prepared, read_meta


class Pretrain:
    fine_tunes = False  # whether it adapts a trained model (LoRA adapters are allowed then)
    needs_trained_model = False  # whether init_from=scratch makes no sense (DPO needs a policy to start from)
    chat = False  # whether the model talks in the chat format (it needs the chat tokens; benchmarks ask in it)
    stats = ()  # names of per-step statistics beside the loss, logged under these names (TRL's, for DPO)
    zero_loss_means_memorised = True  # a loss at ~0 says the data is learnt by heart (not RL's, whose loss may be 0)
    next_step = "sample with `python sample.py --out_dir={out_dir}`"  # the last log line's hint, formatted with the settings

    def __init__(self, settings, log=print):
        self.settings, self.log = settings, log

    def check_settings(self):
        """A one-line problem with this objective's own settings, or None."""
        return None

    def prepare(self, folder):
        """Runs on the first process before any data is read: the embedded Shakespeare is prepared on first use."""
        ensure_prepared(self.settings["dataset"], self.settings["data_dir"])

    def data_tokenizer(self, folder):
        """The tokenizer spec the data was made with (the model must read ids the same way), or None for text data
        that the model's own tokenizer encodes."""
        return tokenizer.dataset_spec(folder, read_meta(folder))  # meta.json checked field by field first

    def check_model(self, model, enc):
        """A one-line problem with the model this run starts from (before any change to it), or None."""
        return None

    def setup(self, model, init_from, resume, lora_info):
        """Anything built from the model before training (DPO's frozen reference); resume: the checkpoint, or None."""

    def to(self, device):
        return self

    def load_data(self, folder, enc, vocab_size):
        """(train, val): objects with get_batch(batch_size, seq_len, seed, step, index, count) and
        eval_batches(batch_size, seq_len, max_batches), batches a pure function of their arguments."""
        seq_len = self.settings["max_seq_len"]
        splits = [TokenShards(folder, split, vocab_size=vocab_size) for split in ("train", "val")]
        for split, data in zip(("train", "val"), splits):
            if data.num_tokens < seq_len + 1:
                fail(f"the {split} split of {folder} has {data.num_tokens} tokens, too few for one window of "
                     f"max_seq_len={seq_len}; lower --max_seq_len or prepare more data")
        return splits

    def loss(self, model, x, y):
        """(the loss to backpropagate, its statistics (len(stats),)) of one micro-batch; model may be DDP-wrapped,
        so everything goes through its forward. return_logits=False: the fused chunked loss, no (B, T, V) logits."""
        return model(x, y, return_logits=False)[1], torch.zeros(len(self.stats), device=x.device)

    def eval_sums(self, model, x, y):
        """Sums over one eval batch that add up over batches and processes: loss, correct next tokens, targets."""
        loss, hit = model.score_tokens(x, y)
        return torch.stack([loss.sum(), hit.sum().float(), (y != -1).sum().float()])

    def eval_metrics(self, val, train):
        """The eval's numbers from the summed val and train batches; val_loss decides the best checkpoint."""
        val_loss = (val[0] / val[2].clamp(min=1)).item()
        return {"val_loss": val_loss, "accuracy": (val[1] / val[2].clamp(min=1)).item(),
                "perplexity": math.exp(min(val_loss, 700)), "train_loss": (train[0] / train[2].clamp(min=1)).item()}

    def describe_eval(self, metrics):
        return f"accuracy {100 * metrics['accuracy']:.2f}% | perplexity {metrics['perplexity']:.2f}"

    def metrics(self, stats):
        """{name: value} of the mean per-step statistics (a tensor in the order of stats)."""
        return {name: v.item() for name, v in zip(self.stats, stats)}

    def describe(self, metrics):
        """The statistics as a fragment of the step's log line, or ""."""
        return ""

    def checkpoint_state(self):
        """What a checkpoint must hold for this objective to resume exactly (beside the model and optimizer)."""
        return {}
