"""
Chat fine-tuning on conversations (JSONL of {"messages": [...]}, the OpenAI / Hugging Face shape), rendered with
the chat tokens; the loss on the assistant replies and their end tokens only. Then talk to it with chat.py.
"""
from nash.data import ChatExamples
from nash.objectives.sft import SFT


class Chat(SFT):
    chat = True
    examples = ChatExamples
    next_step = "talk to it with `python chat.py --out_dir={out_dir}`"
