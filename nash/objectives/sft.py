"""
Supervised fine-tuning on prompt/completion JSONL: the loss on the completion and its end-of-text only
(the prompt and the padding are -1 in y). The language-model loss and metrics are pretrain.py's.
"""
import os

from nash.data import SFTExamples
from nash.objectives.pretrain import Pretrain


class SFT(Pretrain):
    fine_tunes = True
    examples = SFTExamples  # the reader of train.jsonl / val.jsonl
    next_step = ("measure it with `python evaluate.py --out_dir={out_dir}` (exact match on val), or sample with "
                 "`python sample.py --out_dir={out_dir} --start=<a prompt written like the training ones>`")

    def prepare(self, folder):
        pass  # JSONL is read as it is

    def data_tokenizer(self, folder):
        return None  # text: encoded with the model's own tokenizer

    def load_data(self, folder, enc, vocab_size):
        splits = [self.examples(os.path.join(folder, f"{split}.jsonl"), self.settings["max_seq_len"], enc)
                  for split in ("train", "val")]
        for data in splits:
            if data.cut_note:  # examples cut to max_seq_len, said once
                self.log(data.cut_note)
        return splits
