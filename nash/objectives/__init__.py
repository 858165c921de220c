"""
Training objectives, one file each: what the examples are, the loss, the metrics and the log line. train.py
picks one by its `objective` setting and runs the same loop for all of them. A new objective is a new file with a
class like these (pretrain.Pretrain shows every hook, with its default) plus a line here and a config file.
"""
from nash.objectives.chat import Chat
from nash.objectives.dpo import DPO
from nash.objectives.pretrain import Pretrain
from nash.objectives.rl import RL
from nash.objectives.sft import SFT
from nash.objectives.verifier import Verifier

OBJECTIVES = {"pretrain": Pretrain, "sft": SFT, "chat": Chat, "dpo": DPO, "rl": RL, "verifier": Verifier}
